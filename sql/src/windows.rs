//! Flink's group windows: `GROUP BY TUMBLE(ts, size)`, `HOP(ts, slide, size)` and
//! `SESSION(ts, gap)`, with `TUMBLE_START(...)`/`TUMBLE_END(...)` (and HOP_/SESSION_) in the select
//! list. To DataFusion's planner each window is a scalar function returning the window as a
//! struct `{start, end}`, so `X_START(args)` is `get_field(X(args), 'start')` and plans as an
//! expression of the group key; Keystone's window operator, not this function, assigns events to
//! windows.

use crate::schema::timestamp_type;
use datafusion_common::arrow::datatypes::{DataType, Field, Fields, IntervalUnit};
use datafusion_common::{exec_err, plan_err, Result, ScalarValue};
use datafusion_expr::{ColumnarValue, Expr, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility};
use serde::Serialize;

/// A group window, with its sizes in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Window {
    Tumble { size_ms: i64 },
    Hop { slide_ms: i64, size_ms: i64 },
    Session { gap_ms: i64 },
}

impl Window {
    /// The windows (start, end) an event at `ts` belongs to; sessions are merged by the operator.
    pub fn assign(&self, ts: i64) -> Vec<(i64, i64)> {
        match *self {
            Window::Tumble { size_ms } => {
                let start = ts.div_euclid(size_ms) * size_ms;
                vec![(start, start + size_ms)]
            }
            Window::Hop { slide_ms, size_ms } => {
                let last = ts.div_euclid(slide_ms) * slide_ms;
                let mut out = Vec::new();
                let mut start = last;
                while start > ts - size_ms {
                    out.push((start, start + size_ms));
                    start -= slide_ms;
                }
                out.reverse();
                out
            }
            Window::Session { gap_ms } => vec![(ts, ts + gap_ms)],
        }
    }
}

/// Which window function a name is (lowercase), and how many arguments it takes.
const FUNCTIONS: [(&str, usize); 3] = [("tumble", 2), ("hop", 3), ("session", 2)];

/// `tumble_start` -> (`tumble`, `start`): the accessor functions rewritten before planning.
pub fn accessor(name: &str) -> Option<(&'static str, &'static str)> {
    let lower = name.to_ascii_lowercase();
    for (f, _) in FUNCTIONS {
        for part in ["start", "end"] {
            if lower.strip_prefix(f).and_then(|r| r.strip_prefix('_')) == Some(part) {
                return Some((f, part));
            }
        }
    }
    None
}

pub fn is_window_function(name: &str) -> bool {
    FUNCTIONS.iter().any(|(f, _)| *f == name)
}

/// The window a call of one of the window functions describes, once its sizes are literals.
pub fn window_of(name: &str, args: &[Expr]) -> Result<Window> {
    let ms = |i: usize, what: &str| -> Result<i64> {
        let ms = args.get(i).and_then(interval_ms);
        match ms {
            Some(ms) if ms > 0 => Ok(ms),
            _ => plan_err!(
                "the {what} of {} must be a positive interval literal in days, hours, minutes, seconds or \
                 milliseconds (e.g. INTERVAL '1' MINUTE)",
                name.to_uppercase()
            ),
        }
    };
    match name {
        "tumble" => Ok(Window::Tumble { size_ms: ms(1, "size")? }),
        "hop" => {
            let (slide_ms, size_ms) = (ms(1, "slide")?, ms(2, "size")?);
            if size_ms % slide_ms != 0 {
                return plan_err!("HOP's size must be a whole multiple of its slide (Flink requires the same)");
            }
            Ok(Window::Hop { slide_ms, size_ms })
        }
        "session" => Ok(Window::Session { gap_ms: ms(1, "gap")? }),
        other => plan_err!("{other} is not a window function"),
    }
}

/// An interval literal as milliseconds; `None` for anything else, or for months (not a fixed length).
fn interval_ms(e: &Expr) -> Option<i64> {
    let Expr::Literal(v, _) = e else { return None };
    match v {
        ScalarValue::IntervalMonthDayNano(Some(i)) if i.months == 0 => {
            Some(i64::from(i.days) * 86_400_000 + i.nanoseconds / 1_000_000)
        }
        ScalarValue::IntervalDayTime(Some(i)) => Some(i64::from(i.days) * 86_400_000 + i64::from(i.milliseconds)),
        _ => None,
    }
}

/// `{start, end}`: what each window function returns.
pub fn window_struct() -> DataType {
    DataType::Struct(Fields::from(vec![
        Field::new("start", timestamp_type(), false),
        Field::new("end", timestamp_type(), false),
    ]))
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct WindowFunction {
    name: &'static str,
    signature: Signature,
}

impl ScalarUDFImpl for WindowFunction {
    fn name(&self) -> &str {
        self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, args: &[DataType]) -> Result<DataType> {
        let upper = self.name.to_uppercase();
        if !matches!(args.first(), Some(DataType::Timestamp(..))) {
            return plan_err!(
                "the first argument of {upper} is the event-time column, a timestamp (got {})",
                args.first().map_or("nothing".into(), |t| crate::schema::type_name(t))
            );
        }
        if !args[1..]
            .iter()
            .all(|t| matches!(t, DataType::Interval(IntervalUnit::MonthDayNano | IntervalUnit::DayTime)))
        {
            return plan_err!("the sizes of {upper} are intervals (e.g. INTERVAL '1' MINUTE)");
        }
        Ok(window_struct())
    }

    fn invoke_with_args(&self, _args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        // The planner only accepts window functions as GROUP BY keys, which the window operator
        // computes itself; reaching here means a plan slipped past that check.
        exec_err!("{} is only evaluated by the window operator", self.name.to_uppercase())
    }
}

/// The window functions, to register with the planner.
pub fn udfs() -> Vec<ScalarUDF> {
    FUNCTIONS
        .iter()
        .map(|&(name, arity)| {
            ScalarUDF::new_from_impl(WindowFunction { name, signature: Signature::any(arity, Volatility::Immutable) })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_fall_into_the_windows_flink_assigns() {
        assert_eq!(Window::Tumble { size_ms: 10 }.assign(25), [(20, 30)]);
        assert_eq!(Window::Tumble { size_ms: 10 }.assign(-1), [(-10, 0)]);
        // A 10 ms hop sliding by 5: every event is in two windows, the earlier first.
        assert_eq!(Window::Hop { slide_ms: 5, size_ms: 10 }.assign(12), [(5, 15), (10, 20)]);
        assert_eq!(Window::Hop { slide_ms: 5, size_ms: 10 }.assign(10), [(5, 15), (10, 20)]);
        assert_eq!(Window::Session { gap_ms: 30 }.assign(7), [(7, 37)]);
    }

    #[test]
    fn accessors_name_their_window_and_part() {
        assert_eq!(accessor("TUMBLE_START"), Some(("tumble", "start")));
        assert_eq!(accessor("hop_end"), Some(("hop", "end")));
        assert_eq!(accessor("session_start"), Some(("session", "start")));
        assert_eq!(accessor("tumble"), None);
        assert_eq!(accessor("tumble_middle"), None);
    }
}
