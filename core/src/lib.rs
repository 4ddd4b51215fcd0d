//! `tikv-core`: the sans-IO core of the TiKV client and the generic async client API.
//!
//! * [`machine`]: pure state machines (routing, retries, backoff, PD and TSO, the
//!   `BatchCommands` multiplexer, raw KV and transactions). No I/O, no clock, no sleeps, no
//!   ambient randomness: inputs carry `now`, outputs are actions.
//! * [`client`]: the public async API (`RawClient`, later `TransactionClient`), generic over a
//!   small [`client::Runtime`] trait that a runtime crate (`tikv-tokio`, `tikv-smol`) implements.
//!
//! This crate never names tokio, smol, hyper or a socket type.

pub mod client;
pub mod codec;
pub mod config;
pub mod error;
pub(crate) mod hash;
pub mod machine;
pub mod request_source;
pub mod rng;

pub use error::{Error, Result};
