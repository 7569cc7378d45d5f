//! The demo app that runs behind gatehouse: `gatehouse.demo.v1.Demo` (all four gRPC call
//! kinds, plus RPCs that show what the app received and return chosen statuses),
//! `gatehouse.orders.v1.Orders` (tenant-scoped requests for field rules), `grpc.health.v1`
//! and server reflection, so grpcurl works without proto files and gatehouse can learn
//! the app's schema.
//!
//! Shared by the `demo-app` example binary and the end-to-end tests, which run this same
//! code in-process so they can watch what the app observed (cancellations above all).
//! It is served with a bare HTTP/2 server on purpose: it does not enforce `grpc-timeout`
//! itself, like many real apps, so a deadline that ends a call was enforced by gatehouse.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::{Stream, StreamExt, stream};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tonic::metadata::{KeyAndValueRef, MetadataMap, MetadataValue};
use tonic::{Request, Response, Status, Streaming};

pub mod pb {
    include!("generated/gatehouse.demo.v1.rs");
    /// The encoded descriptors of `demo.proto`, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!("generated/demo_descriptor.bin");

    /// `gatehouse.orders.v1`: the tenant-scoped service of `orders.proto`.
    pub mod orders {
        include!("generated/gatehouse.orders.v1.rs");
        /// The encoded descriptors of `orders.proto`, for server reflection.
        pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!("generated/orders_descriptor.bin");
    }
}

use pb::demo_server::{Demo, DemoServer};
use pb::orders::orders_server::{Orders, OrdersServer};
use pb::orders::{OrderReply, OrderRequest};
use pb::*;

/// What the app has observed, shared with whoever started it.
#[derive(Debug, Default)]
pub struct Observed {
    calls: AtomicU64,
    connections: AtomicU64,
    connections_closed: AtomicU64,
    finished: AtomicU64,
    cancelled: AtomicU64,
    waits_started: AtomicU64,
    chat_bytes: AtomicU64,
    countdowns_started: AtomicU64,
    countdown_bytes: AtomicU64,
    orders_received: AtomicU64,
    requests: AtomicU64,
    changed: Notify,
    release: Notify,
}

impl Observed {
    /// Calls whose caller (or gatehouse) went away before the app finished them.
    pub fn cancelled(&self) -> u64 {
        self.cancelled.load(Ordering::SeqCst)
    }

    /// Calls of `Echo`, `Inspect` and `Collect` that reached the app.
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }

    fn count_call(&self) {
        self.calls.fetch_add(1, Ordering::SeqCst);
    }

    /// Connections the app has accepted.
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::SeqCst)
    }

    /// Connections that ended, by either side, while the app kept serving.
    pub fn connections_closed(&self) -> u64 {
        self.connections_closed.load(Ordering::SeqCst)
    }

    /// Streaming calls the app finished sending or receiving.
    pub fn finished(&self) -> u64 {
        self.finished.load(Ordering::SeqCst)
    }

    /// `Wait` calls that reached the app.
    pub fn waits_started(&self) -> u64 {
        self.waits_started.load(Ordering::SeqCst)
    }

    /// Payload bytes `Chat` handlers have read from their request streams.
    pub fn chat_bytes(&self) -> u64 {
        self.chat_bytes.load(Ordering::SeqCst)
    }

    /// `Countdown` calls that reached the app.
    pub fn countdowns_started(&self) -> u64 {
        self.countdowns_started.load(Ordering::SeqCst)
    }

    /// Payload bytes `Countdown` handlers have handed to their response streams.
    pub fn countdown_bytes(&self) -> u64 {
        self.countdown_bytes.load(Ordering::SeqCst)
    }

    /// Calls the app was handed, to any path, whether it serves it or not.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }

    /// `Orders` request messages the app has read, over every call.
    pub fn orders_received(&self) -> u64 {
        self.orders_received.load(Ordering::SeqCst)
    }

    /// Ends every open `Wait` call now, successfully.
    pub fn release_waits(&self) {
        self.release.notify_waiters();
    }

    fn add(&self, counter: &AtomicU64, amount: u64) {
        counter.fetch_add(amount, Ordering::SeqCst);
        self.changed.notify_waiters();
    }

    /// Waits until `condition` holds, at most `limit`; false if it never did.
    pub async fn wait_until(&self, limit: Duration, condition: impl Fn(&Observed) -> bool) -> bool {
        let wait = async {
            loop {
                let changed = self.changed.notified();
                if condition(self) {
                    return;
                }
                changed.await;
            }
        };
        tokio::time::timeout(limit, wait).await.is_ok()
    }
}

/// Counts a cancellation when dropped before [`CancelGuard::finish`].
struct CancelGuard {
    observed: Arc<Observed>,
    finished: bool,
}

impl CancelGuard {
    fn new(observed: &Arc<Observed>) -> Self {
        CancelGuard {
            observed: observed.clone(),
            finished: false,
        }
    }

    fn finish(mut self) {
        self.finished = true;
        self.observed.finished.fetch_add(1, Ordering::SeqCst);
        self.observed.changed.notify_waiters();
    }
}

impl Drop for CancelGuard {
    fn drop(&mut self) {
        if !self.finished {
            self.observed.cancelled.fetch_add(1, Ordering::SeqCst);
            self.observed.changed.notify_waiters();
        }
    }
}

/// The `gatehouse.demo.v1.Demo` implementation.
#[derive(Clone, Debug, Default)]
pub struct DemoService {
    pub observed: Arc<Observed>,
}

type ReplyStream = Pin<Box<dyn Stream<Item = Result<EchoReply, Status>> + Send>>;

fn payload(size: u32, otherwise: Vec<u8>) -> Vec<u8> {
    if size > 0 {
        vec![b'x'; size as usize]
    } else {
        otherwise
    }
}

/// Request metadata starting with `x-echo-` comes back as response metadata.
fn echo_metadata(request: &MetadataMap, response: &mut MetadataMap) {
    for entry in request.iter() {
        match entry {
            KeyAndValueRef::Ascii(key, value) if key.as_str().starts_with("x-echo-") => {
                response.insert(key.clone(), value.clone());
            }
            KeyAndValueRef::Binary(key, value) if key.as_str().starts_with("x-echo-") => {
                response.insert_bin(key.clone(), value.clone());
            }
            _ => {}
        }
    }
}

/// Metadata as key/value pairs; binary values in their base64 wire form.
fn entries(metadata: &MetadataMap) -> Vec<MetadataEntry> {
    metadata
        .iter()
        .map(|entry| match entry {
            KeyAndValueRef::Ascii(key, value) => MetadataEntry {
                key: key.to_string(),
                value: value.to_str().unwrap_or("<not visible ASCII>").to_owned(),
            },
            KeyAndValueRef::Binary(key, value) => MetadataEntry {
                key: key.to_string(),
                value: String::from_utf8_lossy(value.as_encoded_bytes()).into_owned(),
            },
        })
        .collect()
}

#[tonic::async_trait]
impl Demo for DemoService {
    async fn echo(&self, request: Request<EchoRequest>) -> Result<Response<EchoReply>, Status> {
        self.observed.count_call();
        let (metadata, _, message) = request.into_parts();
        let mut response = Response::new(EchoReply {
            payload: payload(message.reply_size, message.payload),
            message: message.message,
            sequence: 0,
        });
        echo_metadata(&metadata, response.metadata_mut());
        Ok(response)
    }

    type CountdownStream = ReplyStream;

    async fn countdown(
        &self,
        request: Request<CountdownRequest>,
    ) -> Result<Response<ReplyStream>, Status> {
        let request = request.into_inner();
        let guard = CancelGuard::new(&self.observed);
        let observed = self.observed.clone();
        observed.add(&observed.countdowns_started, 1);
        let replies = stream::unfold((0u32, Some(guard)), move |(sequence, guard)| {
            let request = request.clone();
            let observed = observed.clone();
            async move {
                let guard = guard?;
                if sequence == request.count {
                    guard.finish();
                    if request.end_code == 0 {
                        return None;
                    }
                    let mut status =
                        Status::new(request.end_code.into(), request.end_message.clone());
                    status
                        .metadata_mut()
                        .insert("x-demo-trailer", MetadataValue::from_static("countdown"));
                    return Some((Err(status), (sequence, None)));
                }
                if request.interval_millis > 0 {
                    tokio::time::sleep(Duration::from_millis(request.interval_millis.into())).await;
                }
                let reply = EchoReply {
                    message: format!("{}", request.count - sequence),
                    payload: vec![b'x'; request.payload_size as usize],
                    sequence,
                };
                observed.add(&observed.countdown_bytes, request.payload_size.into());
                Some((Ok(reply), (sequence + 1, Some(guard))))
            }
        });
        Ok(Response::new(Box::pin(replies)))
    }

    async fn collect(
        &self,
        request: Request<Streaming<EchoRequest>>,
    ) -> Result<Response<CollectReply>, Status> {
        self.observed.count_call();
        let guard = CancelGuard::new(&self.observed);
        let mut inbound = request.into_inner();
        let mut reply = CollectReply::default();
        while let Some(message) = inbound.message().await? {
            reply.count += 1;
            reply.payload_bytes += message.payload.len() as u64;
            reply.last_message = message.message;
            if message.pause_millis > 0 {
                tokio::time::sleep(Duration::from_millis(message.pause_millis.into())).await;
            }
        }
        if let Some(trailers) = inbound.trailers().await? {
            reply.trailers = entries(&trailers);
        }
        guard.finish();
        Ok(Response::new(reply))
    }

    type ChatStream = ReplyStream;

    async fn chat(
        &self,
        request: Request<Streaming<EchoRequest>>,
    ) -> Result<Response<ReplyStream>, Status> {
        let guard = CancelGuard::new(&self.observed);
        let inbound = request.into_inner();
        let observed = self.observed.clone();
        // One request is read per reply handed out: when the replies back up (the caller
        // does not read them), the handler stops reading, as many real handlers do.
        let replies = stream::unfold(
            (inbound, 0u32, Some(guard)),
            move |(mut inbound, sequence, guard)| {
                let observed = observed.clone();
                async move {
                    let guard = guard?;
                    match inbound.next().await {
                        Some(Ok(message)) => {
                            observed.add(&observed.chat_bytes, message.payload.len() as u64);
                            let reply = EchoReply {
                                payload: payload(message.reply_size, message.payload),
                                message: message.message,
                                sequence,
                            };
                            Some((Ok(reply), (inbound, sequence + 1, Some(guard))))
                        }
                        Some(Err(status)) => Some((Err(status), (inbound, sequence, None))),
                        None => {
                            guard.finish();
                            None
                        }
                    }
                }
            },
        );
        Ok(Response::new(Box::pin(replies)))
    }

    async fn inspect(
        &self,
        request: Request<InspectRequest>,
    ) -> Result<Response<InspectReply>, Status> {
        self.observed.count_call();
        let metadata = entries(request.metadata());
        Ok(Response::new(InspectReply { metadata }))
    }

    async fn fail(&self, request: Request<FailRequest>) -> Result<Response<EchoReply>, Status> {
        let request = request.into_inner();
        let mut status = Status::new(request.code.into(), request.message);
        status
            .metadata_mut()
            .insert("x-demo-trailer", MetadataValue::from_static("fail"));
        Err(status)
    }

    async fn wait(&self, request: Request<WaitRequest>) -> Result<Response<EchoReply>, Status> {
        let guard = CancelGuard::new(&self.observed);
        // Made before the call is counted, so a release that follows the count reaches it.
        let released = self.observed.release.notified();
        self.observed.waits_started.fetch_add(1, Ordering::SeqCst);
        self.observed.changed.notify_waiters();
        let millis = request.into_inner().millis;
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(millis.into())) => {}
            () = released => {}
        }
        guard.finish();
        Ok(Response::new(EchoReply {
            message: format!("waited {millis}ms"),
            ..EchoReply::default()
        }))
    }

    async fn cancellations(
        &self,
        _: Request<CancellationsRequest>,
    ) -> Result<Response<CancellationsReply>, Status> {
        Ok(Response::new(CancellationsReply {
            cancelled: self.observed.cancelled(),
        }))
    }
}

type OrderStream = Pin<Box<dyn Stream<Item = Result<OrderReply, Status>> + Send>>;

/// `gatehouse.orders.v1.Orders`: counts every request message it reads, so a test can
/// see exactly which messages reached the app.
#[tonic::async_trait]
impl Orders for DemoService {
    async fn get(&self, request: Request<OrderRequest>) -> Result<Response<OrderReply>, Status> {
        let order = request.into_inner();
        self.observed.add(&self.observed.orders_received, 1);
        Ok(Response::new(OrderReply {
            tenant_id: order.tenant_id,
            note: order.note,
            received: 1,
        }))
    }

    async fn upload(
        &self,
        request: Request<Streaming<OrderRequest>>,
    ) -> Result<Response<OrderReply>, Status> {
        let guard = CancelGuard::new(&self.observed);
        let mut inbound = request.into_inner();
        let mut reply = OrderReply::default();
        while let Some(order) = inbound.message().await? {
            self.observed.add(&self.observed.orders_received, 1);
            reply.received += 1;
            reply.tenant_id = order.tenant_id;
            reply.note = order.note;
        }
        guard.finish();
        Ok(Response::new(reply))
    }

    type WatchStream = OrderStream;

    async fn watch(&self, request: Request<OrderRequest>) -> Result<Response<OrderStream>, Status> {
        let order = request.into_inner();
        self.observed.add(&self.observed.orders_received, 1);
        let replies = (0..order.count).map(move |sequence| {
            Ok(OrderReply {
                tenant_id: order.tenant_id.clone(),
                note: format!("{sequence}"),
                received: 1,
            })
        });
        Ok(Response::new(Box::pin(stream::iter(replies))))
    }

    type SyncStream = OrderStream;

    async fn sync(
        &self,
        request: Request<Streaming<OrderRequest>>,
    ) -> Result<Response<OrderStream>, Status> {
        let guard = CancelGuard::new(&self.observed);
        let inbound = request.into_inner();
        let observed = self.observed.clone();
        let replies = stream::unfold(
            (inbound, 0u32, Some(guard)),
            move |(mut inbound, received, guard)| {
                let observed = observed.clone();
                async move {
                    let guard = guard?;
                    match inbound.next().await {
                        Some(Ok(order)) => {
                            observed.add(&observed.orders_received, 1);
                            let reply = OrderReply {
                                tenant_id: order.tenant_id,
                                note: order.note,
                                received: received + 1,
                            };
                            Some((Ok(reply), (inbound, received + 1, Some(guard))))
                        }
                        Some(Err(status)) => Some((Err(status), (inbound, received, None))),
                        None => {
                            guard.finish();
                            None
                        }
                    }
                }
            },
        );
        Ok(Response::new(Box::pin(replies)))
    }
}

/// The demo services, health and reflection, routed by gRPC path.
pub async fn routes(service: DemoService) -> tonic::service::Routes {
    routes_with(service, &Serving::default()).await
}

/// [`routes`], with the services and reflection `serving` chooses.
pub async fn routes_with(service: DemoService, serving: &Serving) -> tonic::service::Routes {
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<DemoServer<DemoService>>().await;
    let mut sets = vec![
        pb::FILE_DESCRIPTOR_SET,
        tonic_health::pb::FILE_DESCRIPTOR_SET,
    ];
    if !serving.without_orders {
        sets.push(pb::orders::FILE_DESCRIPTOR_SET);
    }
    let mut routes =
        tonic::service::Routes::new(DemoServer::new(service.clone())).add_service(health_service);
    if !serving.without_orders {
        routes = routes.add_service(OrdersServer::new(service));
    }
    if serving.without_reflection {
        return routes;
    }
    let mut v1 = tonic_reflection::server::Builder::configure();
    // grpcurl 1.8 asks for the v1alpha reflection service.
    let mut v1alpha = tonic_reflection::server::Builder::configure();
    for set in sets {
        v1 = v1.register_encoded_file_descriptor_set(set);
        v1alpha = v1alpha.register_encoded_file_descriptor_set(set);
    }
    routes
        .add_service(v1.build_v1().expect("the demo descriptors are valid"))
        .add_service(
            v1alpha
                .build_v1alpha()
                .expect("the demo descriptors are valid"),
        )
}

/// Serves the demo app on `listener` (plaintext HTTP/2) until `stop` resolves; then every
/// open connection is closed at once, as when an app process dies.
pub async fn serve(listener: TcpListener, service: DemoService, stop: impl Future<Output = ()>) {
    serve_with(listener, service, Serving::default(), stop).await
}

/// How the demo app serves, for tests of how gatehouse copes with apps.
#[derive(Clone, Default)]
pub struct Serving {
    /// The HTTP/2 stream limit the app advertises (default: hyper's).
    pub max_concurrent_streams: Option<u32>,
    /// Each `send(())` makes every open connection GOAWAY gracefully (calls in flight
    /// finish) while the app keeps listening, as an app rolling its connections does.
    pub goaway: Option<tokio::sync::broadcast::Sender<()>>,
    /// No server reflection, as many production apps run.
    pub without_reflection: bool,
    /// No `gatehouse.orders.v1.Orders` (nor its descriptors in reflection).
    pub without_orders: bool,
}

/// [`serve`] with the choices of [`Serving`].
pub async fn serve_with(
    listener: TcpListener,
    service: DemoService,
    serving: Serving,
    stop: impl Future<Output = ()>,
) {
    let observed = service.observed.clone();
    let routes = routes_with(service, &serving).await;
    let mut connections = JoinSet::new();
    tokio::pin!(stop);
    loop {
        let (tcp, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(_) => continue,
            },
            () = &mut stop => break,
        };
        let _ = tcp.set_nodelay(true);
        observed.connections.fetch_add(1, Ordering::SeqCst);
        let counted = observed.clone();
        let service = TowerToHyperService::new(
            tower::ServiceBuilder::new()
                .map_request(move |request: http::Request<hyper::body::Incoming>| {
                    counted.add(&counted.requests, 1);
                    request
                })
                .service(routes.clone()),
        );
        let mut goaway = serving.goaway.as_ref().map(|sender| sender.subscribe());
        let max_streams = serving.max_concurrent_streams;
        let observed = observed.clone();
        connections.spawn(async move {
            let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
            if let Some(max) = max_streams {
                builder.max_concurrent_streams(max);
            }
            let connection = builder.serve_connection(TokioIo::new(tcp), service);
            tokio::pin!(connection);
            let asked = async {
                match goaway.as_mut() {
                    Some(goaway) => {
                        let _ = goaway.recv().await;
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = connection.as_mut() => {}
                () = asked => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
            observed.add(&observed.connections_closed, 1);
        });
        // Reap finished connections so a long-running app does not accumulate handles.
        while connections.try_join_next().is_some() {}
    }
    connections.abort_all();
    while connections.join_next().await.is_some() {}
}

/// Binds `address` (port 0 for any free port) and returns the bound address.
pub async fn bind(address: SocketAddr) -> std::io::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(address).await?;
    let bound = listener.local_addr()?;
    Ok((listener, bound))
}
