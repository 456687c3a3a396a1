//! Waiting for a process the tests or the bench started until it answers: the one loop
//! behind the local server, Nchan, moto, `cargo lambda watch` and the managed-instance
//! harness.

use std::{future::Future, time::Duration};

use tokio::time::Instant;

/// Asks `probe` every `every` until it says yes; panics with `what` (which should say
/// what did not come up, and where to look) if `limit` passes first.
pub async fn wait_until<F, Fut>(
    what: impl std::fmt::Display,
    limit: Duration,
    every: Duration,
    mut probe: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let started = Instant::now();
    while !probe().await {
        assert!(started.elapsed() < limit, "after {limit:?}: {what}");
        tokio::time::sleep(every).await;
    }
}

/// Whether a GET of `url` answers 200.
pub async fn answers(client: &reqwest::Client, url: &str) -> bool {
    client
        .get(url)
        .send()
        .await
        .is_ok_and(|answer| answer.status() == 200)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waits_for_a_yes() {
        let mut asked = 0;
        wait_until(
            "never",
            Duration::from_secs(1),
            Duration::from_millis(1),
            || {
                asked += 1;
                std::future::ready(asked == 3)
            },
        )
        .await;
        assert_eq!(asked, 3);
    }

    #[tokio::test]
    #[should_panic(expected = "nothing came up")]
    async fn gives_up_after_the_limit() {
        wait_until(
            "nothing came up",
            Duration::from_millis(20),
            Duration::from_millis(5),
            || std::future::ready(false),
        )
        .await;
    }
}
