//! Cron schedules of cron triggers: five fields (minute, hour, day of month, month, day of
//! week), in UTC.

use chrono::{DateTime, Utc};
use croner::Cron;

pub fn parse(schedule: &str) -> Result<Cron, String> {
    if schedule.split_whitespace().count() != 5 {
        return Err("a schedule has five fields: minute hour day-of-month month day-of-week".to_owned());
    }
    schedule.parse::<Cron>().map_err(|e| e.to_string())
}

/// The first occurrence strictly after `after` (Unix seconds), in Unix seconds.
pub fn next_after(cron: &Cron, after: i64) -> Option<i64> {
    let start = DateTime::<Utc>::from_timestamp(after, 0)?;
    cron.find_next_occurrence(&start, false).ok().map(|t| t.timestamp())
}

/// The latest occurrence at or before `at` (Unix seconds), in Unix seconds.
pub fn latest_at_or_before(cron: &Cron, at: i64) -> Option<i64> {
    let start = DateTime::<Utc>::from_timestamp(at, 0)?;
    cron.find_previous_occurrence(&start, true).ok().map(|t| t.timestamp())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn five_fields_in_utc() {
        let every_hour = parse("0 * * * *").expect("parses");
        // 2026-11-26T10:20:00Z → 11:00.
        assert_eq!(next_after(&every_hour, 1_795_688_400), Some(1_795_690_800));
        assert_eq!(latest_at_or_before(&every_hour, 1_795_688_400), Some(1_795_687_200));
        assert_eq!(
            latest_at_or_before(&every_hour, 1_795_690_800),
            Some(1_795_690_800),
            "an occurrence is its own latest"
        );
        assert!(parse("* * * *").expect_err("refused").contains("five fields"));
        assert!(parse("61 * * * *").is_err());
    }
}
