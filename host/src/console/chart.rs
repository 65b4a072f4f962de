//! The overview's chart of the last hour, drawn on the server as SVG: two
//! lines (events in, deliveries out) over one point per minute. No script and
//! no library: the page reads the same without JavaScript.

use crate::store::inspect::Minute;

pub const WIDTH: i64 = 600;
pub const HEIGHT: i64 = 160;
/// Room at the left for the scale's labels.
pub const LEFT: i64 = 40;

/// What the template draws.
pub struct Chart {
    /// `x,y` pairs for a polyline: events received per minute.
    pub events: String,
    /// The same for attempts answered 2xx.
    pub delivered: String,
    /// The same for attempts that failed.
    pub failed: String,
    /// The scale's top: the largest count of a minute (at least 1).
    pub max: i64,
    pub total_events: i64,
    pub total_delivered: i64,
    pub total_failed: i64,
}

pub fn draw(minutes: &[Minute]) -> Chart {
    let max = minutes
        .iter()
        .map(|m| m.events.max(m.delivered).max(m.failed))
        .max()
        .unwrap_or(0)
        .max(1);
    let step = (WIDTH - LEFT) as f64 / (minutes.len().max(2) - 1) as f64;
    let line = |value: fn(&Minute) -> i64| {
        minutes
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let x = LEFT as f64 + i as f64 * step;
                // 10 px of room at the top and the bottom.
                let y = (HEIGHT - 10) as f64 - value(m) as f64 * (HEIGHT - 20) as f64 / max as f64;
                format!("{x:.1},{y:.1}")
            })
            .collect::<Vec<_>>()
            .join(" ")
    };
    Chart {
        events: line(|m| m.events),
        delivered: line(|m| m.delivered),
        failed: line(|m| m.failed),
        max,
        total_events: minutes.iter().map(|m| m.events).sum(),
        total_delivered: minutes.iter().map(|m| m.delivered).sum(),
        total_failed: minutes.iter().map(|m| m.failed).sum(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_busiest_minute_touches_the_top() {
        let minutes: Vec<Minute> = (0..60)
            .map(|i| Minute {
                at: i * 60_000,
                events: if i == 59 { 8 } else { 2 },
                delivered: 2,
                failed: 0,
            })
            .collect();
        let c = draw(&minutes);
        assert_eq!((c.max, c.total_events, c.total_delivered), (8, 126, 120));
        assert!(c.events.ends_with("600.0,10.0"), "{}", c.events);
        assert!(c.events.starts_with("40.0,115.0"), "{}", c.events);
        assert_eq!(c.failed.split(' ').count(), 60);
    }
}
