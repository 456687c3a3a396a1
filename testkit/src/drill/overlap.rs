//! Two polls of one queue at once, as happens when a browser stops waiting for a poll
//! the server is still holding (its patience ran out behind a slow proxy, a node
//! restarting under the server; or a page reload that keeps its tab's `device=` id and
//! cursor) and polls again: the first answer goes nowhere, the client reads the
//! second. Two events arrive while both are held. The client then polls on, naming what
//! it got; both events must reach it. With two readers the queue splits the events
//! between them, gives the unread one back behind the other, and the client's next
//! acknowledgement used to take it along unseen.

use std::{sync::Arc, time::Duration};

use tokio::time::{Instant, sleep};

use super::{Product, User};
use crate::message;

/// How long the two polls are held before the events come: both set up by then.
const BOTH_HELD: Duration = Duration::from_millis(700);
/// How many more polls the client makes to get both events.
const FOLLOW_UPS: usize = 4;

/// Per user: the events answered `routed: true` that the client never got.
pub async fn run<P: Product>(product: Arc<P>, users: Vec<User>, hold: Duration) -> Vec<String> {
    let lost: Vec<_> = users
        .into_iter()
        .map(|user| {
            let product = product.clone();
            tokio::spawn(async move { one_user(&*product, &user, hold).await })
        })
        .collect();
    let mut missing = Vec::new();
    for user in lost {
        missing.extend(user.await.expect("a user's overlap ran"));
    }
    missing
}

async fn one_user<P: Product>(product: &P, user: &User, hold: Duration) -> Vec<String> {
    // The first poll declares the queue.
    let deadline = Instant::now() + 10 * hold;
    while let Err(failure) = product.poll(user, Some(""), hold).await.outcome {
        assert!(
            Instant::now() < deadline,
            "the user's queue was never declared: {failure:?}"
        );
        sleep(Duration::from_millis(200)).await;
    }
    // The first poll's answer is lost on its way: the client reads only the second.
    let (_lost_on_its_way, (read, routed)) =
        tokio::join!(product.poll(user, Some(""), hold), async {
            let read = product.poll(user, Some(""), hold);
            // Both at once, so that each of the two polls is handed one.
            let publish = async {
                sleep(BOTH_HELD).await;
                let events = [message(0).prepare(), message(1).prepare()];
                let (first, second) = tokio::join!(
                    product.publish(user, &events[0], 0),
                    product.publish(user, &events[1], 0)
                );
                for attempt in [first, second] {
                    assert!(
                        matches!(attempt.outcome, Ok(true)),
                        "a publish to a polling user is routed"
                    );
                }
                events.map(|event| event.id)
            };
            tokio::join!(read, publish)
        });
    let mut received: Vec<String> = read.outcome.unwrap_or_default();
    let mut cursor = received.last().cloned().unwrap_or_default();
    for _ in 0..FOLLOW_UPS {
        if routed.iter().all(|id| received.contains(id)) {
            break;
        }
        if let Ok(ids) = product.poll(user, Some(&cursor), hold).await.outcome {
            if let Some(last) = ids.last() {
                cursor = last.clone();
            }
            received.extend(ids);
        }
    }
    routed
        .into_iter()
        .filter(|id| !received.contains(id))
        .collect()
}
