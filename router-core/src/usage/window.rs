//! UTC calendar windows for budgets: a day from 00:00 UTC, an ISO week from Monday 00:00 UTC,
//! a month from the 1st 00:00 UTC.

use serde::{Deserialize, Serialize};
use time::{Date, Duration, Month, OffsetDateTime, Time};

/// A budget window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BudgetWindow {
    /// From 00:00 UTC to the next 00:00 UTC.
    Daily,
    /// From Monday 00:00 UTC to the next Monday.
    Weekly,
    /// From the 1st 00:00 UTC to the next month's 1st.
    Monthly,
}

impl BudgetWindow {
    /// Every window, shortest first.
    pub const ALL: [BudgetWindow; 3] = [BudgetWindow::Daily, BudgetWindow::Weekly, BudgetWindow::Monthly];

    /// The window's name (`daily`, `weekly`, `monthly`).
    pub fn as_str(self) -> &'static str {
        match self {
            BudgetWindow::Daily => "daily",
            BudgetWindow::Weekly => "weekly",
            BudgetWindow::Monthly => "monthly",
        }
    }

    /// The window holding `now_ms` (Unix ms): its start and its end (exclusive), Unix ms.
    pub fn bounds(self, now_ms: u64) -> (u64, u64) {
        let day = date_of(now_ms);
        let (start, end) = match self {
            BudgetWindow::Daily => (day, day.next_day().expect("in range")),
            BudgetWindow::Weekly => {
                let monday = day - Duration::days(i64::from(day.weekday().number_days_from_monday()));
                (monday, monday + Duration::days(7))
            }
            BudgetWindow::Monthly => {
                let first = Date::from_calendar_date(day.year(), day.month(), 1).expect("valid");
                let (y, m) = match day.month() {
                    Month::December => (day.year() + 1, Month::January),
                    m => (day.year(), m.next()),
                };
                (first, Date::from_calendar_date(y, m, 1).expect("valid"))
            }
        };
        (ms_of(start), ms_of(end))
    }

    /// `f(start, end, label)` for the window holding `now_ms`, from a per-thread cache of the
    /// current window (the decision path asks for the same window over and over).
    pub(crate) fn with_current<R>(self, now_ms: u64, f: impl FnOnce(u64, u64, &str) -> R) -> R {
        thread_local! {
            static CURRENT: std::cell::RefCell<[(u64, u64, String); 3]> = Default::default();
        }
        CURRENT.with(|c| {
            let mut c = c.borrow_mut();
            let slot = &mut c[self as usize];
            if !(slot.0..slot.1).contains(&now_ms) {
                let (start, end) = self.bounds(now_ms);
                *slot = (start, end, self.label(now_ms));
            }
            f(slot.0, slot.1, &slot.2)
        })
    }

    /// A stable label of the window holding `now_ms`, for counter keys: `20261123` (daily),
    /// `w20261123` (weekly, by its Monday), `m202611` (monthly).
    pub fn label(self, now_ms: u64) -> String {
        let (start, _) = self.bounds(now_ms);
        let d = date_of(start);
        match self {
            BudgetWindow::Daily => format!("{:04}{:02}{:02}", d.year(), d.month() as u8, d.day()),
            BudgetWindow::Weekly => format!("w{:04}{:02}{:02}", d.year(), d.month() as u8, d.day()),
            BudgetWindow::Monthly => format!("m{:04}{:02}", d.year(), d.month() as u8),
        }
    }
}

impl std::fmt::Display for BudgetWindow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

fn date_of(ms: u64) -> Date {
    let secs = i64::try_from(ms / 1000).unwrap_or(i64::MAX);
    OffsetDateTime::from_unix_timestamp(secs)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
        .date()
}

fn ms_of(d: Date) -> u64 {
    let t = d.with_time(Time::MIDNIGHT).assume_utc().unix_timestamp();
    u64::try_from(t).unwrap_or(0) * 1000
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-11-23 is a Monday.
    const MON_2026_11_23: u64 = 1_795_392_000_000;

    #[test]
    fn boundaries() {
        let d = 86_400_000;
        assert_eq!(
            BudgetWindow::Daily.bounds(MON_2026_11_23),
            (MON_2026_11_23, MON_2026_11_23 + d)
        );
        assert_eq!(BudgetWindow::Daily.bounds(MON_2026_11_23 - 1).1, MON_2026_11_23);
        assert_eq!(
            BudgetWindow::Weekly.bounds(MON_2026_11_23 + 6 * d + d - 1),
            (MON_2026_11_23, MON_2026_11_23 + 7 * d)
        );
        assert_eq!(BudgetWindow::Weekly.bounds(MON_2026_11_23 - 1).1, MON_2026_11_23);
        // December 2026 starts on a Tuesday, eight days after the Monday.
        let dec1 = MON_2026_11_23 + 8 * d;
        assert_eq!(BudgetWindow::Monthly.bounds(dec1 - 1), (MON_2026_11_23 - 22 * d, dec1));
        assert_eq!(BudgetWindow::Monthly.bounds(dec1).0, dec1);
        assert_eq!(BudgetWindow::Monthly.label(dec1), "m202612");
        assert_eq!(BudgetWindow::Daily.label(MON_2026_11_23), "20261123");
        assert_eq!(BudgetWindow::Weekly.label(MON_2026_11_23 + 3 * d), "w20261123");
        // Year end.
        let (s, e) = BudgetWindow::Monthly.bounds(dec1 + 30 * d);
        assert_eq!((s, e), (dec1, dec1 + 31 * d));
    }
}
