//! Wall-clock time as records and counters carry it.

/// The time now, in Unix milliseconds (0 before 1970, `u64::MAX` past the year 584 million).
#[must_use]
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
