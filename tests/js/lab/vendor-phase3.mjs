// A Phase 3 vendor written the way the course writes it: on connect it joins
// its store, asks for everything queued for it (`getAll`), thanks for each
// delivery and acknowledges it (`received`). Settings: CAPS_URL, STORE,
// TRANSPORTS. It places no orders; it exits on SIGTERM.
import { io } from 'socket.io-client';

const url = process.env.CAPS_URL ?? 'http://localhost:3000/caps';
const store = process.env.STORE ?? '1-206-flowers';
const transports = (process.env.TRANSPORTS ?? 'polling,websocket').split(',');

const socket = io(url, { transports });
socket.on('connect', () => {
  socket.emit('join', store);
  socket.emit('getAll', { clientId: store, event: 'delivered' });
  console.log('VENDOR: connected');
});

socket.on('delivered', (payload) => {
  console.log(`VENDOR: Thank you for delivering ${payload.orderId}`);
  socket.emit('received', { clientId: store, event: 'delivered', messageId: payload.messageId });
});
