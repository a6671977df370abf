// A driver written the way the course writes it: socket.io-client, no auth,
// no acknowledgements; it hears `pickup` and answers on fixed timers.
// Settings: CAPS_URL, PICKUP_MS, DELIVER_MS, TRANSPORTS.
import { io } from 'socket.io-client';

const url = process.env.CAPS_URL ?? 'http://localhost:3000/caps';
const pickupMs = Number(process.env.PICKUP_MS ?? 1000);
const deliverMs = Number(process.env.DELIVER_MS ?? 3000);
const transports = (process.env.TRANSPORTS ?? 'polling,websocket').split(',');

const socket = io(url, { transports });
// Not in the course's driver: lines that let tests see which transport is used.
socket.io.on('open', () => {
  console.log(`DRIVER: opened over ${socket.io.engine.transport.name}`);
  socket.io.engine.once('upgrade', (transport) => console.log(`DRIVER: upgraded to ${transport.name}`));
});
socket.on('connect', () => console.log('DRIVER: connected'));

socket.on('pickup', (payload) => {
  // Waits, reports the package in transit, then waits again and reports it
  // delivered: "a driver waits 1 s before picked up, then 3 s before
  // delivered". (Two timers started together can fire out of order when the
  // event loop stalls, which would report delivered before in-transit.)
  setTimeout(() => {
    console.log(`DRIVER: picked up ${payload.orderId}`);
    socket.emit('in-transit', payload);
    setTimeout(() => {
      console.log(`DRIVER: delivered ${payload.orderId}`);
      socket.emit('delivered', payload);
    }, deliverMs);
  }, pickupMs);
});
