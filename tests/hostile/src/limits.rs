// SPDX-License-Identifier: MIT
//! Limits on waits for another domain, stretched as the VM tests stretch
//! their own: the scenario's init exports `HDM_TIME_SCALE`, a percentage
//! (tests/vm/src/scenario.rs, `hdm_limit` in platform/images/lib.sh). A
//! limit only catches a hang; a slow host makes every domain slower, the
//! other side's steps included.

use std::time::Duration;

/// `d` at the VM run's time scale (100 % outside a VM run).
pub(crate) fn scaled(d: Duration) -> Duration {
    d * percent(std::env::var("HDM_TIME_SCALE").ok().as_deref()) / 100
}

/// The scale a value of `HDM_TIME_SCALE` names; 100 when it is absent or
/// not a percentage the runner accepts (10 to 1000).
fn percent(value: Option<&str>) -> u32 {
    value
        .and_then(|v| v.parse().ok())
        .filter(|p| (10..=1000).contains(p))
        .unwrap_or(100)
}

#[cfg(test)]
mod tests {
    use super::percent;

    #[test]
    fn only_a_percentage_the_runner_accepts_scales() {
        assert_eq!(percent(Some("200")), 200);
        assert_eq!(percent(None), 100);
        assert_eq!(percent(Some("")), 100);
        assert_eq!(percent(Some("5")), 100);
        assert_eq!(percent(Some("two")), 100);
    }
}
