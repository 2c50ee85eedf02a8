//! Values every gateway replica shares, made by the first that needs one (the generated
//! link-signing key, a tenant's webhook secret), against a real nats-server: replicas asking
//! at once all get the one value stored first; a deleted value is made again; a bucket that
//! does not answer yet (its leader not elected, or not made yet) is waited for, within the
//! caller's patience, and then refused with the cause.
#![allow(clippy::unwrap_used, clippy::large_futures)]

use std::time::Duration;

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use futures::future::join_all;
use gateway::auth::signing::{LinkConfig, LinkSigner};
use protocol::shared_value::{self, SharedValueError};
use protocol::{JobId, TenantId};

const BUCKET: &str = "shared_test";

async fn bucket(context: &jetstream::Context) -> kv::Store {
    context
        .create_key_value(kv::Config {
            bucket: BUCKET.to_owned(),
            history: 1,
            ..Default::default()
        })
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_asking_at_once_all_get_the_value_stored_first() {
    let (_server, _client, resources) = testkit::jetstream("shared-values").await;
    let store = bucket(&resources.context).await;
    let answers = join_all((0..8).map(|replica| {
        let store = store.clone();
        async move {
            shared_value::get_or_create(
                &store,
                "signing.auto",
                move || Ok(Bytes::from(format!("made by replica {replica}"))),
                Duration::from_secs(5),
            )
            .await
            .unwrap()
        }
    }))
    .await;
    let stored = store.get("signing.auto").await.unwrap().unwrap();
    assert!(stored.starts_with(b"made by replica "), "{stored:?}");
    for answer in &answers {
        assert_eq!(answer, &stored, "every replica uses the stored value");
    }
    // One write: the others found it, none overwrote it.
    assert_eq!(store.stream.get_info().await.unwrap().state.messages, 1);

    // The generated signing key: two gateways loading at once sign alike.
    let keys = resources.keys.clone().unwrap();
    let config = LinkConfig::default();
    let (first, second) = tokio::join!(
        LinkSigner::load(&config, &keys),
        LinkSigner::load(&config, &keys)
    );
    let job_id = JobId::new();
    assert_eq!(
        first.unwrap().link(job_id, "video", 1_000),
        second.unwrap().link(job_id, "video", 1_000)
    );

    // A tenant's webhook secret, likewise.
    let tenant = TenantId::new("acme").unwrap();
    let (first, second) = tokio::join!(
        gateway::webhooks::sign::secret_of(&keys, &tenant),
        gateway::webhooks::sign::secret_of(&keys, &tenant)
    );
    assert_eq!(first.unwrap().shown(), second.unwrap().shown());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_value_is_made_again_and_the_leader_read_skips_markers() {
    let (_server, _client, resources) = testkit::jetstream("shared-values").await;
    let store = bucket(&resources.context).await;
    let make = |text: &'static str| move || Ok(Bytes::from_static(text.as_bytes()));
    let patience = Duration::from_secs(5);
    let first = shared_value::get_or_create(&store, "w.acme", make("first"), patience)
        .await
        .unwrap();
    assert_eq!(first, "first");
    let (value, revision) = shared_value::get_latest(&store, "w.acme")
        .await
        .unwrap()
        .unwrap();
    assert_eq!((value, revision), (Bytes::from_static(b"first"), 1));
    // Found, not made: the maker is not asked.
    let again = shared_value::get_or_create(
        &store,
        "w.acme",
        || Err("must not be made twice".to_owned()),
        patience,
    )
    .await
    .unwrap();
    assert_eq!(again, "first");

    store.delete("w.acme").await.unwrap();
    assert!(
        shared_value::get_latest(&store, "w.acme")
            .await
            .unwrap()
            .is_none()
    );
    let remade = shared_value::get_or_create(&store, "w.acme", make("second"), patience)
        .await
        .unwrap();
    assert_eq!(remade, "second");
    store.purge("w.acme").await.unwrap();
    assert!(
        shared_value::get_latest(&store, "w.acme")
            .await
            .unwrap()
            .is_none()
    );
    // A maker that fails is reported, with its reason.
    let refused = shared_value::get_or_create(
        &store,
        "w.acme",
        || Err("no randomness".to_owned()),
        patience,
    )
    .await
    .unwrap_err();
    assert!(
        matches!(refused, SharedValueError::Make { .. }),
        "{refused:?}"
    );
    assert!(refused.with_causes().contains("no randomness"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bucket_that_does_not_answer_yet_is_waited_for_within_the_patience() {
    let (_server, _client, resources) = testkit::jetstream("shared-values").await;
    let context = resources.context.clone();
    let store = bucket(&context).await;
    context.delete_key_value(BUCKET).await.unwrap();

    // Gone for longer than the patience: refused, with the cause.
    let started = std::time::Instant::now();
    let refused = shared_value::get_or_create(
        &store,
        "signing.auto",
        || Ok(Bytes::from_static(b"key")),
        Duration::from_millis(300),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(refused, SharedValueError::Read { .. }),
        "{refused:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));

    // Back within the patience: the value is stored once it answers.
    let waiting = tokio::spawn({
        let store = store.clone();
        async move {
            shared_value::get_or_create(
                &store,
                "signing.auto",
                || Ok(Bytes::from_static(b"key")),
                Duration::from_secs(10),
            )
            .await
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!waiting.is_finished(), "nothing to store into yet");
    let recreated = bucket(&context).await;
    assert_eq!(waiting.await.unwrap().unwrap(), "key");
    assert_eq!(recreated.get("signing.auto").await.unwrap().unwrap(), "key");
}
