// The peer caps is measured against: a Node socket.io 4.8 hub doing the work
// a production hub would, in memory: the same events and payloads, exactly
// one driver per package (least loaded), the store told once of in-transit
// and delivered, delivery notices queued per store until `received`.
// PORT=0 picks a free port; the first line printed names the address.
//
// JOURNAL=file makes it durable the cheap way: every inbound event is
// appended to the file as one JSON line and handled only once the batch it
// is in is written and fdatasync'd. One flush per event-loop turn: the
// events read in one turn are one batch, written and synced together
// (synchronously, so a burst that arrives meanwhile waits in the socket
// buffers and is the next turn's batch). Nothing is sent before the event
// that caused it is on disk. (A restart would replay the whole file; this
// peer does not.)
import { createServer } from 'node:http';
import { randomUUID } from 'node:crypto';
import { closeSync, fdatasyncSync, openSync, writeSync } from 'node:fs';
import { Server } from 'socket.io';

const journal = process.env.JOURNAL ? openSync(process.env.JOURNAL, 'a') : null;
let batch = []; // [line, handle] of events not yet on disk

function flush() {
  const taken = batch;
  batch = [];
  writeSync(journal, taken.map(([line]) => line).join(''));
  fdatasyncSync(journal);
  for (const [, handle] of taken) handle();
}

/** `handler`, handled at once in memory, or after its event is on disk. */
function journaled(event, handler) {
  if (journal === null) return handler;
  return (payload) => {
    batch.push([`${JSON.stringify({ event, payload })}\n`, () => handler(payload)]);
    if (batch.length === 1) setImmediate(flush);
  };
}
process.on('exit', () => journal !== null && closeSync(journal));

const httpServer = createServer();
const io = new Server(httpServer, { maxHttpBufferSize: 1e6 });
const caps = io.of('/caps');

const orders = new Map(); // `${store}/${orderId}` -> { order, state, driver }
const drivers = new Map(); // name -> { socket, load }
const ready = []; // keys waiting for a driver
const notices = new Map(); // messageId -> store

function key(order) {
  return `${order.store}/${order.orderId}`;
}

function leastLoaded() {
  let best = null;
  for (const driver of drivers.values()) {
    if (!best || driver.load < best.load) best = driver;
  }
  return best;
}

function dispatch() {
  while (ready.length > 0) {
    const driver = leastLoaded();
    if (!driver) return;
    const entry = orders.get(ready.shift());
    entry.state = 'assigned';
    entry.driver = driver;
    driver.load += 1;
    driver.socket.emit('pickup', entry.order);
  }
}

caps.on('connection', (socket) => {
  const auth = socket.handshake.auth ?? {};
  if (auth.role === 'vendor' && auth.store) socket.join(auth.store);
  if (auth.role === 'driver' && auth.name) {
    drivers.set(auth.name, { socket, load: 0 });
    dispatch();
    socket.on('disconnect', () => drivers.delete(auth.name));
  }

  socket.on('pickup', journaled('pickup', (order) => {
    if (typeof order?.store !== 'string' || typeof order?.orderId !== 'string') return;
    const k = key(order);
    if (orders.has(k)) return;
    orders.set(k, { order, state: 'ready', driver: null });
    ready.push(k);
    dispatch();
  }));
  socket.on('in-transit', journaled('in-transit', (order) => {
    const entry = orders.get(key(order ?? {}));
    if (!entry || entry.state !== 'assigned' || entry.driver?.socket !== socket) return;
    entry.state = 'in-transit';
    caps.to(order.store).emit('in-transit', entry.order);
  }));
  socket.on('delivered', journaled('delivered', (order) => {
    const entry = orders.get(key(order ?? {}));
    if (!entry || entry.state !== 'in-transit' || entry.driver?.socket !== socket) return;
    entry.state = 'delivered';
    entry.driver.load -= 1;
    const messageId = randomUUID();
    notices.set(messageId, order.store);
    caps.to(order.store).emit('delivered', {
      ...entry.order, event: 'delivered', messageId, queueId: order.store, clientId: order.store, order: entry.order,
    });
    dispatch();
  }));
  socket.on('received', journaled('received', (request) => {
    if (notices.get(request?.messageId) === request?.queueId) notices.delete(request.messageId);
  }));
});

httpServer.listen(Number(process.env.PORT ?? 3000), '127.0.0.1', () => {
  console.log(`node peer hub listening on http://127.0.0.1:${httpServer.address().port}`);
});
