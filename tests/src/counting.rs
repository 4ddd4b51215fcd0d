//! A runtime wrapper that records every gRPC connection the client opens and what travels on
//! it, for the connection-pool scenarios: [`Counting`] wraps any [`Runtime`] and hands out
//! [`CountingChannel`]s, which count unary calls and the messages written on each stream, and
//! log the order in which stream messages leave over all connections.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_lite::{Stream, StreamExt};
use tikv_core::Error;
use tikv_core::client::{Channel, Runtime, Status};
use tikv_core::config::Config;

/// One connection opened through [`Counting::connect`].
#[derive(Debug)]
pub struct ConnRecord {
    /// Index in the order the connections were opened.
    pub index: usize,
    /// The address dialed.
    pub address: String,
    /// Paths of the streams opened on it, in order.
    pub streams: Mutex<Vec<&'static str>>,
    /// Unary calls made on it, by path.
    pub unary: Mutex<Vec<&'static str>>,
    /// Messages written on its streams.
    pub stream_messages: AtomicU64,
}

/// Every connection of one [`Counting`] runtime.
#[derive(Debug, Default)]
pub struct ConnLog {
    conns: Mutex<Vec<Arc<ConnRecord>>>,
    /// (connection index, stream path) of every stream message written, in order.
    sent: Mutex<Vec<(usize, &'static str)>>,
}

impl ConnLog {
    fn open(&self, address: &str) -> Arc<ConnRecord> {
        let mut conns = self.conns.lock().expect("conn log");
        let rec = Arc::new(ConnRecord {
            index: conns.len(),
            address: address.to_owned(),
            streams: Mutex::new(Vec::new()),
            unary: Mutex::new(Vec::new()),
            stream_messages: AtomicU64::new(0),
        });
        conns.push(rec.clone());
        rec
    }

    /// Every connection opened so far.
    pub fn connections(&self) -> Vec<Arc<ConnRecord>> {
        self.conns.lock().expect("conn log").clone()
    }

    /// The connections that opened a stream with `path`.
    pub fn with_stream(&self, path: &str) -> Vec<Arc<ConnRecord>> {
        self.connections()
            .into_iter()
            .filter(|c| c.streams.lock().expect("streams").contains(&path))
            .collect()
    }

    /// The connections that made a unary call whose path starts with `prefix`.
    pub fn with_unary(&self, prefix: &str) -> Vec<Arc<ConnRecord>> {
        self.connections()
            .into_iter()
            .filter(|c| {
                c.unary
                    .lock()
                    .expect("unary")
                    .iter()
                    .any(|p| p.starts_with(prefix))
            })
            .collect()
    }

    /// The connection index of every message written on a stream with `path`, in order.
    pub fn stream_order(&self, path: &str) -> Vec<usize> {
        self.sent
            .lock()
            .expect("sent")
            .iter()
            .filter(|(_, p)| *p == path)
            .map(|(i, _)| *i)
            .collect()
    }

    /// Forgets the stream messages written so far (connections stay).
    pub fn clear_order(&self) {
        self.sent.lock().expect("sent").clear();
    }
}

/// `R` with every connection recorded in a shared [`ConnLog`].
#[derive(Debug, Clone)]
pub struct Counting<R> {
    inner: R,
    log: Arc<ConnLog>,
}

impl<R> Counting<R> {
    /// Wraps `inner`.
    pub fn new(inner: R) -> Self {
        Counting {
            inner,
            log: Arc::default(),
        }
    }

    /// The log of this runtime's connections (shared by its clones).
    pub fn log(&self) -> Arc<ConnLog> {
        self.log.clone()
    }
}

impl<R: Runtime> Runtime for Counting<R> {
    type Channel = CountingChannel<R::Channel>;
    type Sleep = R::Sleep;

    fn from_config(config: &Config) -> Result<Self, Error> {
        Ok(Counting::new(R::from_config(config)?))
    }

    fn now(&self) -> Instant {
        self.inner.now()
    }

    fn spawn<F>(&self, future: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.inner.spawn(future);
    }

    fn sleep_until(&self, deadline: Instant) -> Self::Sleep {
        self.inner.sleep_until(deadline)
    }

    fn connect(&self, address: &str) -> impl Future<Output = Result<Self::Channel, Error>> + Send {
        let dial = self.inner.connect(address);
        let log = self.log.clone();
        let address = address.to_owned();
        async move {
            let inner = dial.await?;
            let record = log.open(&address);
            Ok(CountingChannel { inner, record, log })
        }
    }
}

/// A channel of a [`Counting`] runtime.
#[derive(Debug, Clone)]
pub struct CountingChannel<C> {
    inner: C,
    record: Arc<ConnRecord>,
    log: Arc<ConnLog>,
}

impl<C: Channel> CountingChannel<C> {
    fn note_unary(&self, path: &'static str) {
        self.record.unary.lock().expect("unary").push(path);
    }

    fn count<S>(
        &self,
        path: &'static str,
        requests: S,
    ) -> impl Stream<Item = Bytes> + Send + 'static
    where
        S: Stream<Item = Bytes> + Send + 'static,
    {
        self.record.streams.lock().expect("streams").push(path);
        let record = self.record.clone();
        let log = self.log.clone();
        requests.map(move |msg| {
            record.stream_messages.fetch_add(1, Ordering::Relaxed);
            log.sent.lock().expect("sent").push((record.index, path));
            msg
        })
    }
}

impl<C: Channel> Channel for CountingChannel<C> {
    type Responses = C::Responses;

    fn unary(
        &self,
        path: &'static str,
        request: Bytes,
        timeout: Option<Duration>,
    ) -> impl Future<Output = Result<Bytes, Status>> + Send + 'static {
        self.note_unary(path);
        self.inner.unary(path, request, timeout)
    }

    fn streaming<S>(
        &self,
        path: &'static str,
        requests: S,
    ) -> impl Future<Output = Result<Self::Responses, Status>> + Send + 'static
    where
        S: Stream<Item = Bytes> + Send + 'static,
    {
        let requests = self.count(path, requests);
        self.inner.streaming(path, requests)
    }

    fn unary_with_metadata(
        &self,
        path: &'static str,
        request: Bytes,
        timeout: Option<Duration>,
        metadata: &[(&'static str, String)],
    ) -> impl Future<Output = Result<Bytes, Status>> + Send + 'static {
        self.note_unary(path);
        self.inner
            .unary_with_metadata(path, request, timeout, metadata)
    }

    fn streaming_with_metadata<S>(
        &self,
        path: &'static str,
        requests: S,
        metadata: &[(&'static str, String)],
    ) -> impl Future<Output = Result<Self::Responses, Status>> + Send + 'static
    where
        S: Stream<Item = Bytes> + Send + 'static,
    {
        let requests = self.count(path, requests);
        self.inner.streaming_with_metadata(path, requests, metadata)
    }
}
