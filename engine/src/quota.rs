//! Per-stream ingest quota: a token bucket refilled at the declared rate, holding up to two
//! seconds' worth so short bursts pass. A request takes tokens for all its events or none (a batch
//! stays all-or-nothing) and is otherwise told how long to wait.

use std::sync::Mutex;
use std::time::{Duration, Instant};

pub struct Quota {
    per_second: f64,
    burst: f64,
    /// Tokens available, as of the instant.
    state: Mutex<(f64, Instant)>,
}

/// The request can never pass: it holds more events than the bucket ever does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    TooLarge { burst: u64 },
    Wait(Duration),
}

impl Quota {
    pub fn per_second(rate: u32, now: Instant) -> Quota {
        let per_second = f64::from(rate.max(1));
        let burst = per_second * 2.0;
        Quota { per_second, burst, state: Mutex::new((burst, now)) }
    }

    /// Takes `events` tokens, or says why not.
    pub fn take(&self, events: u64, now: Instant) -> Result<(), Refusal> {
        let wanted = events as f64;
        if wanted > self.burst {
            return Err(Refusal::TooLarge { burst: self.burst as u64 });
        }
        let mut state = self.state.lock().expect("quota lock");
        let (tokens, at) = *state;
        let tokens = (tokens + now.saturating_duration_since(at).as_secs_f64() * self.per_second).min(self.burst);
        if tokens >= wanted {
            *state = (tokens - wanted, now);
            Ok(())
        } else {
            *state = (tokens, now);
            Err(Refusal::Wait(Duration::from_secs_f64((wanted - tokens) / self.per_second)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bursts_pass_then_the_rate_holds() {
        let t0 = Instant::now();
        let q = Quota::per_second(100, t0);
        assert_eq!(q.take(150, t0), Ok(()));
        assert_eq!(q.take(50, t0), Ok(()), "two seconds' worth in a burst");
        let Err(Refusal::Wait(wait)) = q.take(50, t0) else { panic!("the bucket is empty") };
        assert_eq!(wait, Duration::from_millis(500));
        assert_eq!(q.take(50, t0 + Duration::from_millis(500)), Ok(()), "refilled at 100/s");
        assert_eq!(q.take(201, t0 + Duration::from_secs(60)), Err(Refusal::TooLarge { burst: 200 }));
    }
}
