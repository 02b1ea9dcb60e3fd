//! A tokio stream that carries the real client address from a PROXY header and replays bytes already read.
