//! Fault injection per Backend (`faultInjection`): delay a share of requests by a fixed time
//! and abort a share with a status, on the calling side, so teams can check that their
//! timeouts and retries do what they think. Injected outcomes carry flag `FI`.
//!
//! Each request draws independently: a request may be delayed and then aborted. The delay
//! is bounded by its configured value; it is not counted against the route's timeouts (it
//! stands in for the network, before the exchange starts).

use std::time::Duration;

use ficus_config::FaultInjection;
use http::StatusCode;

/// The faults of one Backend.
#[derive(Debug, Clone, Copy)]
pub struct Fault {
    /// Share (0.0..=1.0) of requests aborted, and their status.
    abort: Option<(f64, StatusCode)>,
    /// Share (0.0..=1.0) of requests delayed, and the delay.
    delay: Option<(f64, Duration)>,
}

impl Fault {
    /// From the validated policy; `None` when it would never inject anything.
    pub fn new(fault: &FaultInjection) -> Option<Self> {
        let abort = fault.abort.and_then(|(percent, status)| {
            let status = StatusCode::from_u16(status).ok()?;
            (percent > 0.0).then_some((percent / 100.0, status))
        });
        let delay = fault
            .delay
            .filter(|(percent, delay)| *percent > 0.0 && !delay.is_zero())
            .map(|(percent, delay)| (percent / 100.0, delay));
        (abort.is_some() || delay.is_some()).then_some(Self { abort, delay })
    }

    /// The delay to inject into this request, if it draws one.
    pub fn delay(&self) -> Option<Duration> {
        let (share, delay) = self.delay?;
        draw(share).then_some(delay)
    }

    /// The status to abort this request with, if it draws one.
    pub fn abort(&self) -> Option<StatusCode> {
        let (share, status) = self.abort?;
        draw(share).then_some(status)
    }
}

fn draw(share: f64) -> bool {
    rand::random::<f64>() < share
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_are_respected_within_statistical_bounds() {
        let fault = Fault::new(&FaultInjection {
            abort: Some((10.0, 503)),
            delay: Some((50.0, Duration::from_millis(5))),
        })
        .unwrap();
        let aborted = (0..10_000).filter(|_| fault.abort().is_some()).count();
        let delayed = (0..10_000).filter(|_| fault.delay().is_some()).count();
        // Binomial(10000, p): sd 30 for 10 %, 50 for 50 %; bounds are over 6 sd wide.
        assert!((800..=1200).contains(&aborted), "{aborted}");
        assert!((4700..=5300).contains(&delayed), "{delayed}");
    }

    #[test]
    fn a_policy_that_never_injects_compiles_to_nothing() {
        let never = FaultInjection {
            abort: Some((0.0, 503)),
            delay: Some((30.0, Duration::ZERO)),
        };
        assert!(Fault::new(&never).is_none());
        let always = Fault::new(&FaultInjection {
            abort: Some((100.0, 418)),
            delay: None,
        })
        .unwrap();
        assert_eq!(always.abort(), Some(StatusCode::IM_A_TEAPOT));
        assert_eq!(always.delay(), None);
    }
}
