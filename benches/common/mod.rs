//! The benches' webhook receiver: hyper on its own tokio runtime, answering
//! every request `200 ok` as fast as it can. The benches measure the
//! daemon, so this only has to keep up and tell them what arrived.

use std::convert::Infallible;
use std::sync::Arc;

use http_body_util::{BodyExt as _, Full};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// Starts a receiver on a free port of 127.0.0.1 and returns the port. It
/// calls `on_request(path, body)` for each request once its body is read,
/// then answers `200 ok`; it serves until the bench process ends.
pub fn start_receiver(on_request: impl Fn(&str, &[u8]) + Send + Sync + 'static) -> u16 {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("bench-receiver")
        .enable_all()
        .build()
        .expect("start the receiver's runtime");
    let listener = runtime
        .block_on(TcpListener::bind("127.0.0.1:0"))
        .expect("bind receiver");
    let port = listener.local_addr().expect("addr").port();
    let on_request = Arc::new(on_request);
    std::thread::spawn(move || {
        runtime.block_on(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                // Head and body in two segments would wait 40 ms for a
                // delayed ACK.
                let _ = stream.set_nodelay(true);
                let on_request = Arc::clone(&on_request);
                tokio::spawn(async move {
                    let service = service_fn(move |req: hyper::Request<Incoming>| {
                        let on_request = Arc::clone(&on_request);
                        async move {
                            let path = req.uri().path().to_string();
                            let body = match req.into_body().collect().await {
                                Ok(body) => body.to_bytes(),
                                Err(_) => Bytes::new(),
                            };
                            on_request(&path, &body);
                            Ok::<_, Infallible>(hyper::Response::new(Full::new(
                                Bytes::from_static(b"ok"),
                            )))
                        }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        })
    });
    port
}
