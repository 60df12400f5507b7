//! The upstream key: rotation without restart, and readiness when its file goes bad.

use std::time::{Duration, Instant};

use http::StatusCode;

use crate::support::*;

fn replace_file(path: &std::path::Path, contents: &str) {
    // Write then rename, as a secret rotation (or Kubernetes' atomic symlink swap) does.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test]
async fn a_replaced_key_file_takes_effect_within_five_seconds() {
    let upstream = Upstream::recording().await;
    let gateway = TestGateway::start(&format!("http://{}", upstream.addr)).await;
    let url = gateway.url("/v1.3/assets");
    assert_eq!(get(&url, Some(ALICE_KEY)).await.status(), StatusCode::OK);
    assert_eq!(upstream.requests()[0].headers["x-api-key"], UPSTREAM_KEY);

    replace_file(&gateway.key_file(), "rotated-upstream-key\n");
    let started = Instant::now();
    let mut sent = 1;
    loop {
        assert_eq!(get(&url, Some(ALICE_KEY)).await.status(), StatusCode::OK);
        sent += 1;
        let seen = upstream.requests();
        assert_eq!(seen.len(), sent);
        if seen[sent - 1].headers["x-api-key"] == "rotated-upstream-key" {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the rotated key was not used within 5 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("rotated key in use after {:?}", started.elapsed());
    gateway.shutdown().await;
}

async fn readyz(gateway: &TestGateway) -> (StatusCode, serde_json::Value) {
    let response = get(&format!("http://{}/readyz", gateway.admin), None).await;
    let status = response.status();
    (status, body_json(response).await)
}

#[tokio::test]
async fn an_emptied_or_vanished_key_file_keeps_the_last_key_and_turns_readyz_503() {
    let upstream = Upstream::recording().await;
    let gateway = TestGateway::start(&format!("http://{}", upstream.addr)).await;
    let (status, json) = readyz(&gateway).await;
    assert_eq!(status, StatusCode::OK, "{json}");
    assert_eq!(json["checks"]["upstream_key"], "ok");
    let health = get(&format!("http://{}/healthz", gateway.admin), None).await;
    assert_eq!(health.status(), StatusCode::OK);

    for breakage in ["empty", "remove"] {
        match breakage {
            "empty" => std::fs::write(gateway.key_file(), "").unwrap(),
            _ => std::fs::remove_file(gateway.key_file()).unwrap(),
        }
        let started = Instant::now();
        let json = loop {
            let (status, json) = readyz(&gateway).await;
            if status == StatusCode::SERVICE_UNAVAILABLE {
                break json;
            }
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "{breakage}: /readyz stayed 200"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!(json["ready"], false);
        assert!(
            json["checks"]["upstream_key"]
                .as_str()
                .unwrap()
                .contains("keeping the last good key"),
            "{json}"
        );
        assert!(!json.to_string().contains(UPSTREAM_KEY));
        // Traffic keeps flowing with the last good key.
        assert_eq!(
            get(&gateway.url("/v1.3/assets"), Some(BOB_KEY))
                .await
                .status(),
            StatusCode::OK
        );
        assert_eq!(
            upstream.requests().last().unwrap().headers["x-api-key"],
            UPSTREAM_KEY
        );

        replace_file(&gateway.key_file(), &format!("{UPSTREAM_KEY}\n"));
        let started = Instant::now();
        while readyz(&gateway).await.0 != StatusCode::OK {
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "{breakage}: /readyz did not recover"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    gateway.shutdown().await;
}
