// caps dispatch board: a viewer of the hub. It listens to `activity` over
// Socket.IO for every order's change and refreshes the board from
// GET /api/status; the form places orders with POST /api/orders.
(() => {
  'use strict';
  const $ = (id) => document.getElementById(id);
  const FEED_LENGTH = 50;
  const RECENT_FINISHED = 12;

  const fromHash = new URLSearchParams(location.hash.slice(1)).get('token');
  if (fromHash) sessionStorage.setItem('caps-token', fromHash);
  const token = sessionStorage.getItem('caps-token') || '';
  $('token').value = token;

  // The hub writes one column per order state (open ones list the orders
  // under way; final ones, those that recently got there).
  const columns = [...document.querySelectorAll('.board .column[data-state]')]
    .map((column) => ({ state: column.dataset.state, final: column.dataset.final === 'true' }));
  const recentlyFinished = new Map(columns.filter((c) => c.final).map((c) => [c.state, []]));
  const mine = new Map(); // orderId -> { store, state, li }
  const storesSeen = new Set();
  let lastStatus = null;

  function api(path, options = {}) {
    const headers = { 'content-type': 'application/json', ...(options.headers || {}) };
    if (token) headers.authorization = `Bearer ${token}`;
    return fetch(path, { ...options, headers });
  }

  function item(text, detail) {
    const li = document.createElement('li');
    li.textContent = text;
    if (detail) {
      const small = document.createElement('small');
      small.textContent = detail;
      li.append(small);
    }
    return li;
  }

  const filter = () => $('store-filter').value;
  const visible = (store) => !filter() || store === filter();

  function noteStore(store) {
    if (storesSeen.has(store)) return;
    storesSeen.add(store);
    const option = document.createElement('option');
    option.value = option.textContent = store;
    $('store-filter').append(option);
  }

  function renderBoard() {
    if (!lastStatus) return;
    const { orders, openOrders, drivers, stores } = lastStatus;
    for (const { state, final } of columns) {
      const list = $(`list-${state}`);
      if (final) {
        const recent = recentlyFinished.get(state).filter((a) => visible(a.store));
        list.replaceChildren(...recent.map((a) => item(a.orderId, `${a.store} · ${a.driver || ''}`)));
        $(`count-${state}`).textContent = orders[state] ?? 0;
      } else {
        const shown = openOrders.filter((o) => o.state === state && visible(o.store));
        list.replaceChildren(...shown.map((o) => item(o.orderId, o.driver ? `${o.store} · ${o.driver}` : o.store)));
        $(`count-${state}`).textContent = filter() ? shown.length : (orders[state] ?? 0);
      }
    }

    const online = drivers.filter((d) => d.online);
    $('count-drivers').textContent = online.length;
    $('drivers').replaceChildren(...drivers.map((d) => item(
      `${d.name}${d.online ? '' : ' (offline)'}`,
      `load ${d.load}${d.capacity ? `/${d.capacity}` : ''} · delivered ${d.delivered}`,
    )));
    $('stores').replaceChildren(...stores.map((s) => item(s.store, `${s.vendors} vendor connection(s)`)));
    stores.forEach((s) => noteStore(s.store));
    openOrders.forEach((o) => noteStore(o.store));
  }

  let refreshTimer = null;
  function scheduleRefresh() {
    if (refreshTimer) return;
    refreshTimer = setTimeout(async () => {
      refreshTimer = null;
      try {
        const response = await api('/api/status');
        if (response.ok) {
          lastStatus = await response.json();
          renderBoard();
        }
      } catch (error) {
        console.warn('status refresh failed', error);
      }
    }, 150);
  }

  function addToFeed(activity) {
    noteStore(activity.store);
    const when = new Date(activity.time).toLocaleTimeString();
    const li = item(`${activity.state} · ${activity.orderId}`, `${when} · ${activity.store}${activity.driver ? ` · ${activity.driver}` : ''}`);
    li.dataset.store = activity.store;
    li.hidden = !visible(activity.store);
    $('feed').prepend(li);
    while ($('feed').children.length > FEED_LENGTH) $('feed').lastChild.remove();
  }

  function trackMine(activity) {
    const order = mine.get(activity.orderId);
    if (!order || order.store !== activity.store) return;
    order.state.textContent = activity.state;
    order.state.className = `state ${activity.state}`;
  }

  const socket = io('/caps', {
    auth: token ? { token } : { role: 'viewer' },
    transports: ['websocket', 'polling'],
  });
  const pill = $('connection');
  socket.on('connect', () => {
    pill.dataset.state = 'live';
    pill.textContent = 'live';
    scheduleRefresh();
  });
  socket.on('disconnect', () => {
    pill.dataset.state = 'down';
    pill.textContent = 'reconnecting…';
  });
  socket.on('connect_error', (error) => {
    pill.dataset.state = 'down';
    pill.textContent = error.message;
  });
  socket.on('activity', (activity) => {
    const recent = recentlyFinished.get(activity.state);
    if (recent) {
      recent.unshift(activity);
      recent.length = Math.min(recent.length, RECENT_FINISHED);
    }
    addToFeed(activity);
    trackMine(activity);
    scheduleRefresh();
  });

  $('store-filter').addEventListener('change', () => {
    for (const li of $('feed').children) li.hidden = !visible(li.dataset.store);
    renderBoard();
  });

  $('token-form').addEventListener('submit', (event) => {
    event.preventDefault();
    sessionStorage.setItem('caps-token', $('token').value.trim());
    location.hash = '';
    location.reload();
  });

  $('order-form').addEventListener('submit', async (event) => {
    event.preventDefault();
    const error = $('order-error');
    error.hidden = true;
    const body = {
      store: $('order-store').value.trim(),
      customer: $('order-customer').value.trim(),
      address: $('order-address').value.trim(),
    };
    const response = await api('/api/orders', { method: 'POST', body: JSON.stringify(body) });
    const reply = await response.json();
    if (!response.ok) {
      error.textContent = `${reply.error.code}: ${reply.error.message}`;
      error.hidden = false;
      return;
    }
    const li = item(reply.orderId, `${reply.store} · ${reply.customer}, ${reply.address}`);
    const state = document.createElement('span');
    state.className = 'state';
    state.textContent = 'ready';
    li.prepend(state, ' ');
    li.dataset.orderId = reply.orderId;
    $('my-orders').prepend(li);
    mine.set(reply.orderId, { store: reply.store, state });
    $('order-customer').value = '';
    $('order-address').value = '';
  });

  setInterval(scheduleRefresh, 5000);
})();
