//! [`Router`]: the innermost service of a consumer, which hands each message to the handler
//! routed for its type (or, failing that, for its topic).
//!
//! Handlers are plain async functions. A typed handler ([`Router::on`]) receives the
//! payload decoded from JSON into its own type, so user code never matches on type strings;
//! a raw handler ([`Router::on_raw`], [`Router::on_topic`]) receives the [`Incoming`]
//! message itself.
//!
//! ```
//! use cairn_bus::{HandlerError, Incoming, router::Router};
//! use serde::Deserialize;
//!
//! #[derive(Deserialize)]
//! struct OrderPlaced {
//!     order: String,
//!     total: u64,
//! }
//!
//! let router = Router::new()
//!     .on("order.placed", |placed: OrderPlaced, _: Incoming| async move {
//!         if placed.total == 0 {
//!             return Err(HandlerError::permanent(format!("order {} is empty", placed.order)));
//!         }
//!         Ok(())
//!     })
//!     .on_topic("audit", |message: Incoming| async move {
//!         let _ = message.message.payload.len();
//!         Ok(())
//!     });
//! assert_eq!(router.routes(), 2);
//! ```

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::FutureExt;
use futures::future::BoxFuture;
use serde::de::DeserializeOwned;
use tower::Service;

use crate::handler::{HandlerError, Incoming};
use cairn_core::KeyedHash;

type Route = Arc<dyn Fn(Incoming) -> BoxFuture<'static, Result<(), HandlerError>> + Send + Sync>;

/// Dispatches messages to handlers by message type, then by topic, then to the fallback;
/// a message with no handler fails with [`HandlerError::NoRoute`] (permanent).
///
/// Cheap to clone: the routes are shared.
#[derive(Clone, Default)]
pub struct Router {
    /// Shared by the clones: the retry middleware clones its inner service for every
    /// message, so a clone is one reference count.
    routes: Arc<Routes>,
}

/// The routes of a [`Router`].
#[derive(Clone, Default)]
struct Routes {
    by_type: HashMap<String, Route, KeyedHash>,
    by_topic: HashMap<String, Route, KeyedHash>,
    fallback: Option<Route>,
}

impl Router {
    /// A router with no routes.
    pub fn new() -> Self {
        Self::default()
    }

    /// Routes messages of `message_type` to `handler`, which receives the payload decoded
    /// from JSON as `T` (a payload that does not decode fails with the permanent
    /// [`HandlerError::Decode`]) together with the message.
    ///
    /// # Panics
    ///
    /// When `message_type` already has a handler: a second route for one type is a
    /// programming mistake, caught when the router is built.
    #[must_use]
    pub fn on<T, F, Fut>(self, message_type: &str, handler: F) -> Self
    where
        T: DeserializeOwned + Send + 'static,
        F: Fn(T, Incoming) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
    {
        self.on_raw(
            message_type,
            move |incoming: Incoming| match serde_json::from_slice::<T>(&incoming.message.payload) {
                Ok(body) => handler(body, incoming).boxed(),
                Err(source) => {
                    let error = HandlerError::Decode {
                        message_type: incoming.message.message_type.to_string(),
                        target: std::any::type_name::<T>(),
                        source,
                    };
                    futures::future::ready(Err(error)).boxed()
                }
            },
        )
    }

    /// Routes messages of `message_type` to `handler`, which receives the message as is.
    ///
    /// # Panics
    ///
    /// When `message_type` already has a handler.
    #[must_use]
    pub fn on_raw<F, Fut>(mut self, message_type: &str, handler: F) -> Self
    where
        F: Fn(Incoming) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
    {
        let routes = &mut Arc::make_mut(&mut self.routes).by_type;
        let previous = routes.insert(message_type.to_owned(), boxed(handler));
        assert!(
            previous.is_none(),
            "message type {message_type:?} is routed twice"
        );
        self
    }

    /// Routes every message from `topic` whose type has no handler of its own to
    /// `handler`.
    ///
    /// # Panics
    ///
    /// When `topic` already has a handler.
    #[must_use]
    pub fn on_topic<F, Fut>(mut self, topic: &str, handler: F) -> Self
    where
        F: Fn(Incoming) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
    {
        let routes = &mut Arc::make_mut(&mut self.routes).by_topic;
        let previous = routes.insert(topic.to_owned(), boxed(handler));
        assert!(previous.is_none(), "topic {topic:?} is routed twice");
        self
    }

    /// Handles every message no other route takes.
    #[must_use]
    pub fn fallback<F, Fut>(mut self, handler: F) -> Self
    where
        F: Fn(Incoming) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
    {
        Arc::make_mut(&mut self.routes).fallback = Some(boxed(handler));
        self
    }

    /// How many routes the router has (types and topics; the fallback counts as one).
    pub fn routes(&self) -> usize {
        let routes = &*self.routes;
        routes.by_type.len() + routes.by_topic.len() + usize::from(routes.fallback.is_some())
    }

    fn route(&self, incoming: &Incoming) -> Option<&Route> {
        let routes = &*self.routes;
        routes
            .by_type
            .get(incoming.message.message_type.as_str())
            .or_else(|| routes.by_topic.get(&*incoming.topic))
            .or(routes.fallback.as_ref())
    }
}

fn boxed<F, Fut>(handler: F) -> Route
where
    F: Fn(Incoming) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
{
    Arc::new(move |incoming| handler(incoming).boxed())
}

impl Service<Incoming> for Router {
    type Response = ();
    type Error = HandlerError;
    type Future = BoxFuture<'static, Result<(), HandlerError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), HandlerError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, incoming: Incoming) -> Self::Future {
        match self.route(&incoming) {
            Some(route) => route(incoming),
            None => {
                let error = HandlerError::NoRoute {
                    message_type: incoming.message.message_type.to_string(),
                    topic: incoming.topic.to_string(),
                };
                futures::future::ready(Err(error)).boxed()
            }
        }
    }
}

impl fmt::Debug for Router {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut types: Vec<&String> = self.routes.by_type.keys().collect();
        types.sort();
        let mut topics: Vec<&String> = self.routes.by_topic.keys().collect();
        topics.sort();
        f.debug_struct("Router")
            .field("types", &types)
            .field("topics", &topics)
            .field("fallback", &self.routes.fallback.is_some())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use serde::Deserialize;
    use tower::ServiceExt;

    use super::*;
    use crate::message::Message;

    #[derive(Debug, Deserialize, PartialEq)]
    struct Deposited {
        account: String,
        amount: u64,
    }

    fn incoming(topic: &str, message: Message) -> Incoming {
        Incoming::new(topic, message)
    }

    #[tokio::test]
    async fn typed_handlers_receive_the_decoded_payload() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&seen);
        let router = Router::new().on("deposited", move |body: Deposited, _| {
            let sink = Arc::clone(&sink);
            async move {
                sink.lock().unwrap().push(body);
                Ok(())
            }
        });
        let message = Message::json(
            "deposited",
            &serde_json::json!({"account": "a-1", "amount": 5}),
        )
        .unwrap();
        router.oneshot(incoming("bank", message)).await.unwrap();
        assert_eq!(
            *seen.lock().unwrap(),
            vec![Deposited {
                account: "a-1".into(),
                amount: 5
            }]
        );
    }

    #[tokio::test]
    async fn a_payload_that_does_not_decode_is_a_permanent_decode_error() {
        let router = Router::new().on("deposited", |_: Deposited, _| async { Ok(()) });
        let error = router
            .oneshot(incoming(
                "bank",
                Message::new("deposited", &b"not json"[..]),
            ))
            .await
            .unwrap_err();
        assert_eq!(error.code(), "decode");
        assert!(!error.is_retryable());
        assert!(error.to_string().contains("Deposited"), "{error}");
    }

    #[tokio::test]
    async fn type_routes_win_over_topic_routes_and_the_fallback_takes_the_rest() {
        let hits = Arc::new(Mutex::new(Vec::new()));
        let route = |name: &'static str| {
            let hits = Arc::clone(&hits);
            move |_: Incoming| {
                hits.lock().unwrap().push(name);
                async { Ok(()) }
            }
        };
        let router = Router::new()
            .on_raw("a", route("type a"))
            .on_topic("t", route("topic t"))
            .fallback(route("fallback"));
        for (topic, kind) in [("t", "a"), ("t", "b"), ("u", "b")] {
            router
                .clone()
                .oneshot(incoming(topic, Message::new(kind, Vec::new())))
                .await
                .unwrap();
        }
        assert_eq!(*hits.lock().unwrap(), vec!["type a", "topic t", "fallback"]);
    }

    #[tokio::test]
    async fn a_message_without_a_route_fails_permanently_naming_type_and_topic() {
        let router = Router::new().on_raw("a", |_| async { Ok(()) });
        let error = router
            .oneshot(incoming("t", Message::new("b", Vec::new())))
            .await
            .unwrap_err();
        assert!(
            matches!(&error, HandlerError::NoRoute { message_type, topic }
            if message_type == "b" && topic == "t")
        );
        assert!(!error.is_retryable());
    }

    #[test]
    fn routing_one_type_twice_is_refused() {
        let twice = std::panic::catch_unwind(|| {
            Router::new()
                .on_raw("a", |_| async { Ok(()) })
                .on_raw("a", |_| async { Ok(()) })
        });
        assert!(twice.is_err());
    }

    #[test]
    fn clones_share_routes_and_adding_to_one_leaves_the_other() {
        let one = Router::new().on_raw("a", |_| async { Ok(()) });
        let two = one.clone().on_raw("b", |_| async { Ok(()) });
        assert_eq!(one.routes(), 1);
        assert_eq!(two.routes(), 2);
    }
}
