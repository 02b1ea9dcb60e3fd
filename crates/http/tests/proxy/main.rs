//! The HTTP layer with real sockets, real clients (curl, h2load, tungstenite, hyper) and real
//! backends (hyper servers, nginx). One test binary (faster to link); modules by area.

mod common;
mod direct;
mod errors;
mod h2;
mod nginx;
mod observe;
mod own_h1;
mod policies;
mod routing;
mod websocket;
