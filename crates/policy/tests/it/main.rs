//! The policy service in-process against a fake bus and a fake exec on real sockets.
