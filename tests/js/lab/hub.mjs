// A hub written the way the course writes it: Node socket.io 4.8, namespace
// `caps`, a room per store, pickup broadcast to every other socket.
// PORT=0 picks a free port; the first line printed names the address.
import { createServer } from 'node:http';
import { Server } from 'socket.io';

const httpServer = createServer();
const io = new Server(httpServer);
const caps = io.of('/caps');

function logEvent(event, payload) {
  console.log('EVENT', JSON.stringify({ event, time: new Date().toISOString(), payload }));
}

caps.on('connection', (socket) => {
  socket.on('join', (room) => socket.join(room));
  socket.on('pickup', (payload) => {
    logEvent('pickup', payload);
    socket.broadcast.emit('pickup', payload);
  });
  socket.on('in-transit', (payload) => {
    logEvent('in-transit', payload);
    caps.to(payload.store).emit('in-transit', payload);
  });
  socket.on('delivered', (payload) => {
    logEvent('delivered', payload);
    caps.to(payload.store).emit('delivered', payload);
  });
});

httpServer.listen(Number(process.env.PORT ?? 3000), '127.0.0.1', () => {
  console.log(`lab hub listening on http://127.0.0.1:${httpServer.address().port}`);
});
