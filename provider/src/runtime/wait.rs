//! Waiting for a condition the runtime cannot be told about, only ask:
//! pods gone, a namespace deleted, ports freed. One loop for all of them,
//! so each caller says what it asks and what it reports, not how to poll.

use std::future::Future;
use std::time::{Duration, Instant};

/// One look at the condition: met (with what it yields), or not yet (with
/// what is still pending, for the report if time runs out).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check<T, P> {
    Met(T),
    Pending(P),
}

/// Asks `probe` every `pause` until the condition is met or `deadline`
/// passes: `Ok(Ok(met))`, or `Ok(Err(pending))` with what the last look
/// saw pending. A probe's error ends the wait at once.
pub async fn wait_until<T, P, E, F, Fut>(deadline: Instant, pause: Duration, mut probe: F) -> Result<Result<T, P>, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Check<T, P>, E>>,
{
    loop {
        match probe().await? {
            Check::Met(met) => return Ok(Ok(met)),
            Check::Pending(pending) if Instant::now() >= deadline => return Ok(Err(pending)),
            Check::Pending(_) => tokio::time::sleep(pause).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    const PAUSE: Duration = Duration::from_millis(1);

    #[tokio::test]
    async fn asks_until_the_condition_is_met() {
        let asked = AtomicU32::new(0);
        let waited = wait_until(Instant::now() + Duration::from_secs(5), PAUSE, || async {
            let n = asked.fetch_add(1, Ordering::Relaxed) + 1;
            Ok::<_, ()>(if n == 3 { Check::Met(n) } else { Check::Pending(n) })
        })
        .await;
        assert_eq!(waited, Ok(Ok(3)));
    }

    #[tokio::test]
    async fn reports_what_was_pending_when_time_ran_out() {
        let asked = AtomicU32::new(0);
        let waited = wait_until(Instant::now() + Duration::from_millis(20), PAUSE, || async {
            Ok::<Check<(), u32>, ()>(Check::Pending(asked.fetch_add(1, Ordering::Relaxed) + 1))
        })
        .await;
        let Ok(Err(last)) = waited else { panic!("the wait did not time out: {waited:?}") };
        assert_eq!(last, asked.load(Ordering::Relaxed), "the last look's pending state");
        assert!(last >= 2, "asked again before giving up");
    }

    #[tokio::test]
    async fn a_probe_error_ends_the_wait_at_once() {
        let asked = AtomicU32::new(0);
        let waited = wait_until(Instant::now() + Duration::from_secs(5), PAUSE, || async {
            asked.fetch_add(1, Ordering::Relaxed);
            Err::<Check<(), ()>, _>("unreachable API server")
        })
        .await;
        assert_eq!(waited, Err("unreachable API server"));
        assert_eq!(asked.load(Ordering::Relaxed), 1);
    }
}
