// A vendor written the way the course writes it: socket.io-client, no auth,
// no acknowledgements, `join` with the bare store id. Settings come from the
// environment so tests can drive it: CAPS_URL, STORE, INTERVAL_MS, COUNT,
// TRANSPORTS (comma-separated, e.g. "polling,websocket").
import { io } from 'socket.io-client';
import { randomUUID } from 'node:crypto';

const url = process.env.CAPS_URL ?? 'http://localhost:3000/caps';
const store = process.env.STORE ?? '1-206-flowers';
const intervalMs = Number(process.env.INTERVAL_MS ?? 5000);
const count = Number(process.env.COUNT ?? Infinity);
const transports = (process.env.TRANSPORTS ?? 'polling,websocket').split(',');

const socket = io(url, { transports });
socket.emit('join', store);

let placed = 0;
const outstanding = new Set();
const timer = setInterval(() => {
  if (placed >= count) return;
  const order = {
    store,
    orderId: randomUUID(),
    customer: 'Jamal Braun',
    address: 'Schmittfurt, LA',
  };
  placed += 1;
  outstanding.add(order.orderId);
  socket.emit('pickup', order);
  console.log(`VENDOR: order ${order.orderId} ready for pickup`);
}, intervalMs);

socket.on('delivered', (payload) => {
  console.log(`VENDOR: Thank you for delivering ${payload.orderId}`);
  outstanding.delete(payload.orderId);
  if (placed >= count && outstanding.size === 0) {
    clearInterval(timer);
    socket.close();
  }
});
