//! Least privilege, judged by the real servers: NATS refuses a service that
//! publishes on another's subject or reads another's consumer, and anybody
//! without a key.

use std::time::Duration;

use async_nats::jetstream;
use tokio::sync::mpsc;
use tracehop_messaging::access::{self, NatsUser};
use tracehop_messaging::topology::{self, Service};
use tracehop_proto::subjects;
use tracehop_testkit::NatsServer;

/// A client as `user` whose server errors (permission violations among
/// them) arrive on the receiver.
async fn connect_hearing_errors(
    server: &NatsServer,
    user: NatsUser,
) -> (async_nats::Client, mpsc::UnboundedReceiver<String>) {
    let (errors, heard) = mpsc::unbounded_channel();
    let client = access::connect_options(user, &server.credentials(user))
        .event_callback(move |event| {
            let errors = errors.clone();
            async move {
                if let async_nats::Event::ServerError(error) = event {
                    let _ = errors.send(error.to_string());
                }
            }
        })
        .connect(server.url())
        .await
        .expect("failed to connect");
    (client, heard)
}

/// Waits for the server to refuse something on `subject`; fails on any
/// other error or none within 10 s.
async fn refused(heard: &mut mpsc::UnboundedReceiver<String>, action: &str, subject: &str) {
    let error = tokio::time::timeout(Duration::from_secs(10), heard.recv())
        .await
        .unwrap_or_else(|_| panic!("the server did not refuse {action} {subject}"))
        .expect("the error channel closed");
    let error = error.to_lowercase();
    assert!(
        error.contains("permissions violation") && error.contains(&format!("{action} to \"{subject}\"").to_lowercase()),
        "expected a refusal of {action} {subject}, got: {error}"
    );
}

/// A server with the streams and durables `tracehop up` creates.
async fn prepared_server() -> NatsServer {
    let server = NatsServer::start().await.expect("failed to start nats-server");
    let command = server.connect_command().await.unwrap();
    topology::ensure_all(&jetstream::new(command), topology::StreamReplicas::ONE)
        .await
        .expect("the command prepares the streams");
    server
}

#[tokio::test(flavor = "multi_thread")]
async fn nobody_connects_without_a_key() {
    let server = NatsServer::start().await.unwrap();
    let anonymous = async_nats::ConnectOptions::new().connect(server.url()).await;
    let error = anonymous.expect_err("an anonymous connection was accepted");
    assert_eq!(error.kind(), async_nats::ConnectErrorKind::AuthorizationViolation, "{error}");

    // A key the server does not know is refused the same way.
    let stranger = nkeys::KeyPair::new_user().seed().unwrap();
    let error = async_nats::ConnectOptions::new().nkey(stranger).connect(server.url()).await.err();
    assert!(error.is_some(), "an unknown key was accepted");

    // The control: a known key connects.
    server.connect_service(Service::Loyalty).await.expect("loyalty's own key is accepted");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_service_cannot_publish_on_another_services_subjects() {
    let server = prepared_server().await;
    let (loyalty, mut heard) = connect_hearing_errors(&server, NatsUser::Service(Service::Loyalty)).await;

    // Forging an order event.
    loyalty.publish(subjects::ORDER_CONFIRMED, "forged".into()).await.unwrap();
    loyalty.flush().await.unwrap();
    refused(&mut heard, "publish", subjects::ORDER_CONFIRMED).await;
    // Charging a card.
    loyalty.publish(subjects::PAYMENT_CHARGE, "charge".into()).await.unwrap();
    refused(&mut heard, "publish", subjects::PAYMENT_CHARGE).await;
    // Writing another service's spans, dead letters or alerts.
    for subject in ["spans.0.00000000000000000000000000000001.order", "deadletter.analytics", "tracehop.alerts.x"] {
        loyalty.publish(subject, "forged".into()).await.unwrap();
        refused(&mut heard, "publish", subject).await;
    }

    // Listening to requests or replies that are not its own.
    let _charges = loyalty.subscribe(subjects::PAYMENT_CHARGE).await.unwrap();
    refused(&mut heard, "subscription", subjects::PAYMENT_CHARGE).await;
    let _replies = loyalty.subscribe("_INBOX.order.>").await.unwrap();
    refused(&mut heard, "subscription", "_INBOX.order.>").await;

    // The ORDERS stream holds nothing: the forged event never got there.
    let command = jetstream::new(server.connect_command().await.unwrap());
    let mut orders = command.get_stream(topology::ORDERS_STREAM).await.unwrap();
    assert_eq!(orders.info().await.unwrap().state.messages, 0);

    // The control: order may publish its events.
    let order = jetstream::new(server.connect_service(Service::Order).await.unwrap());
    order.publish(subjects::ORDER_CONFIRMED, "an event".into()).await.unwrap().await.unwrap();
    assert_eq!(orders.info().await.unwrap().state.messages, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_service_cannot_read_another_services_stream_or_consumer() {
    let server = prepared_server().await;
    let order = jetstream::new(server.connect_service(Service::Order).await.unwrap());
    order.publish(subjects::ORDER_CONFIRMED, "an event".into()).await.unwrap().await.unwrap();

    // Notification may read its own durable...
    let (notification, mut heard) = connect_hearing_errors(&server, NatsUser::Service(Service::Notification)).await;
    let js = jetstream::new(notification.clone());
    let orders = js.get_stream(topology::ORDERS_STREAM).await.expect("its own stream's info");
    orders.get_consumer::<jetstream::consumer::pull::Config>("notification").await.expect("its own consumer");
    // ...but not loyalty's: neither its state nor its messages.
    assert!(orders.get_consumer::<jetstream::consumer::pull::Config>("loyalty").await.is_err());
    refused(&mut heard, "publish", "$JS.API.CONSUMER.INFO.ORDERS.loyalty").await;
    notification.publish("$JS.API.CONSUMER.MSG.NEXT.ORDERS.loyalty", "1".into()).await.unwrap();
    refused(&mut heard, "publish", "$JS.API.CONSUMER.MSG.NEXT.ORDERS.loyalty").await;

    // Inventory consumes nothing: it may not read the ORDERS stream at all,
    // nor the span feed.
    let (inventory, mut heard) = connect_hearing_errors(&server, NatsUser::Service(Service::Inventory)).await;
    let js = jetstream::new(inventory);
    assert!(js.get_stream(topology::ORDERS_STREAM).await.is_err());
    refused(&mut heard, "publish", "$JS.API.STREAM.INFO.ORDERS").await;
    let feed = js.get_stream_no_info("SPANS").await.unwrap();
    assert!(feed.create_consumer(jetstream::consumer::pull::OrderedConfig::default()).await.is_err());
    refused(&mut heard, "publish", "$JS.API.CONSUMER.CREATE.SPANS").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_service_role_cannot_read_another_services_schema() {
    use sqlx::Connection as _;
    let db = tracehop_testkit::TestDatabase::create().await.unwrap();
    tracehop_launcher::ensure_database_roles(&db.url(), |_| None).await.unwrap();
    // Twice: it is idempotent.
    tracehop_launcher::ensure_database_roles(&db.url(), |_| None).await.unwrap();
    let url = tracehop_launcher::service_database_url(&db.url(), Service::Loyalty, None).unwrap().unwrap();
    let mut loyalty = sqlx::PgConnection::connect(&url).await.expect("loyalty's role logs in");

    // Its own schema: read and write.
    let accounts: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM loyalty.accounts").fetch_one(&mut loyalty).await.unwrap();
    assert!(accounts >= 0);
    sqlx::query("DELETE FROM loyalty.accruals WHERE false").execute(&mut loyalty).await.unwrap();

    // Every other schema: refused by PostgreSQL (42501, insufficient privilege).
    for statement in [
        "SELECT COUNT(*) FROM ordering.orders",
        "SELECT COUNT(*) FROM payment.payments",
        "SELECT COUNT(*) FROM inventory.products",
        "SELECT COUNT(*) FROM notification.emails",
        "SELECT COUNT(*) FROM analytics.order_events",
        "UPDATE inventory.products SET on_hand = 0",
        "CREATE TABLE public.loot (card text)",
        "DROP TABLE ordering.orders",
    ] {
        let error = sqlx::query(statement).execute(&mut loyalty).await.expect_err(statement);
        let code = error.as_database_error().and_then(|e| e.code()).map(|c| c.to_string());
        assert!(code.as_deref() == Some("42501"), "{statement}: expected a refusal, got {error}");
    }
}
