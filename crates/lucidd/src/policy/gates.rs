//! The donation gates: each says whether serving others is allowed right now, and why not.
//!
//! Power and temperature come from sysfs (`class/power_supply`, `class/thermal`) under a root
//! that tests point at files of their own.

use std::path::{Path, PathBuf};

use super::Policy;

/// A donation gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GateKind {
    /// The operator paused serving (`manual_pause`).
    ManualPause,
    /// The machine runs on battery.
    Battery,
    /// The machine is too hot.
    Temperature,
    /// Outside the hours the operator allows.
    Hours,
    /// As many remote jobs run as the operator allows.
    Concurrency,
}

impl GateKind {
    /// The gate's name, as the policy file and status pages say it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ManualPause => "manual_pause",
            Self::Battery => "battery",
            Self::Temperature => "temperature",
            Self::Hours => "hours",
            Self::Concurrency => "concurrency",
        }
    }
}

/// One gate's state.
#[derive(Debug, Clone, PartialEq)]
pub struct Gate {
    /// Which gate.
    pub kind: GateKind,
    /// Whether it lets remote jobs through.
    pub open: bool,
    /// Why, for people.
    pub reason: String,
}

/// Reads the machine's power and temperature.
#[derive(Debug, Clone)]
pub struct Sensors {
    root: PathBuf,
}

impl Default for Sensors {
    fn default() -> Self {
        Self::new("/sys")
    }
}

impl Sensors {
    /// Sensors under `root` (normally `/sys`).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// `Some(true)` when running on battery: no mains or USB supply is online and a battery
    /// is discharging. `None` when the machine reports no power supplies (most servers).
    pub fn on_battery(&self) -> Option<bool> {
        let supplies = entries(&self.root.join("class/power_supply"));
        if supplies.is_empty() {
            return None;
        }
        let mut external_online = false;
        let mut discharging = false;
        for supply in supplies {
            match read(&supply.join("type")).as_deref() {
                Some("Mains" | "USB" | "USB_C" | "USB_PD") => {
                    external_online |= read(&supply.join("online")).as_deref() == Some("1");
                }
                Some("Battery") => {
                    discharging |= read(&supply.join("status")).as_deref() == Some("Discharging");
                }
                _ => {}
            }
        }
        Some(!external_online && discharging)
    }

    /// The hottest thermal zone, in °C, if the machine reports any.
    pub fn max_temperature(&self) -> Option<f64> {
        entries(&self.root.join("class/thermal"))
            .into_iter()
            .filter(|p| {
                p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("thermal_zone"))
            })
            .filter_map(|zone| read(&zone.join("temp"))?.parse::<f64>().ok())
            .map(|millidegrees| millidegrees / 1000.0)
            .reduce(f64::max)
    }
}

fn entries(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    out.sort();
    out
}

fn read(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok().map(|s| s.trim().to_string())
}

/// Every gate, given the policy, the sensors, the local time (minutes since midnight) and the
/// number of remote jobs running.
pub fn evaluate(policy: &Policy, sensors: &Sensors, minute_of_day: u16, running: u32) -> Vec<Gate> {
    let mut gates = Vec::new();
    gates.push(Gate {
        kind: GateKind::ManualPause,
        open: !policy.manual_pause,
        reason: if policy.manual_pause {
            "paused by the operator (manual_pause = true)".into()
        } else {
            "not paused".into()
        },
    });
    let battery = sensors.on_battery();
    gates.push(match (policy.auto_pause.on_battery, battery) {
        (false, _) => Gate {
            kind: GateKind::Battery,
            open: true,
            reason: "not checked (auto_pause.on_battery = false)".into(),
        },
        (true, Some(true)) => Gate {
            kind: GateKind::Battery,
            open: false,
            reason: "running on battery (auto_pause.on_battery)".into(),
        },
        (true, Some(false)) => {
            Gate { kind: GateKind::Battery, open: true, reason: "on external power".into() }
        }
        (true, None) => {
            Gate { kind: GateKind::Battery, open: true, reason: "no battery reported".into() }
        }
    });
    let temperature = sensors.max_temperature();
    gates.push(match (policy.auto_pause.max_temp_celsius, temperature) {
        (None, _) => Gate { kind: GateKind::Temperature, open: true, reason: "not checked".into() },
        (Some(max), Some(t)) if t > max => Gate {
            kind: GateKind::Temperature,
            open: false,
            reason: format!(
                "{t:.1} °C is over the limit of {max:.1} °C (auto_pause.max_temp_celsius)"
            ),
        },
        (Some(max), Some(t)) => Gate {
            kind: GateKind::Temperature,
            open: true,
            reason: format!("{t:.1} °C, limit {max:.1} °C"),
        },
        (Some(_), None) => Gate {
            kind: GateKind::Temperature,
            open: true,
            reason: "no thermal zone reported".into(),
        },
    });
    let windows = policy.windows();
    let now = format!("{:02}:{:02}", minute_of_day / 60, minute_of_day % 60);
    gates.push(if windows.is_empty() {
        Gate {
            kind: GateKind::Hours,
            open: true,
            reason: "any time (auto_pause.hours is empty)".into(),
        }
    } else if windows.iter().any(|w| w.contains(minute_of_day)) {
        Gate {
            kind: GateKind::Hours,
            open: true,
            reason: format!("{now} is inside auto_pause.hours"),
        }
    } else {
        Gate {
            kind: GateKind::Hours,
            open: false,
            reason: format!("{now} local time is outside auto_pause.hours"),
        }
    });
    let max = policy.max_concurrent_remote_jobs;
    gates.push(Gate {
        kind: GateKind::Concurrency,
        open: running < max,
        reason: format!("{running} of {max} remote jobs running (max_concurrent_remote_jobs)"),
    });
    gates
}

/// Minutes since local midnight now.
pub fn local_minute_of_day() -> u16 {
    let now = jiff::ZonedDateTime::now();
    (now.hour() as u16) * 60 + now.minute() as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(root: &Path, rel: &str, text: &str) {
        let path = root.join(rel);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, format!("{text}\n")).expect("write");
    }

    fn closed(gates: &[Gate]) -> Vec<&'static str> {
        gates.iter().filter(|g| !g.open).map(|g| g.kind.as_str()).collect()
    }

    #[test]
    fn battery_and_temperature_from_sysfs_files() {
        let root = tempfile::tempdir().expect("tmp");
        let sensors = Sensors::new(root.path());
        assert_eq!(sensors.on_battery(), None);
        assert_eq!(sensors.max_temperature(), None);
        write(root.path(), "class/power_supply/AC/type", "Mains");
        write(root.path(), "class/power_supply/AC/online", "1");
        write(root.path(), "class/power_supply/BAT0/type", "Battery");
        write(root.path(), "class/power_supply/BAT0/status", "Charging");
        assert_eq!(sensors.on_battery(), Some(false));
        write(root.path(), "class/power_supply/AC/online", "0");
        write(root.path(), "class/power_supply/BAT0/status", "Discharging");
        assert_eq!(sensors.on_battery(), Some(true));
        write(root.path(), "class/thermal/thermal_zone0/temp", "45000");
        write(root.path(), "class/thermal/thermal_zone1/temp", "91500");
        write(root.path(), "class/thermal/cooling_device0/temp", "999000");
        assert_eq!(sensors.max_temperature(), Some(91.5));

        let policy = Policy::default();
        let gates = evaluate(&policy, &sensors, 12 * 60, 0);
        assert_eq!(closed(&gates), vec!["battery", "temperature"]);
        assert!(gates[2].reason.contains("91.5 °C is over the limit of 85.0 °C"), "{:?}", gates[2]);
    }

    #[test]
    fn pause_hours_and_concurrency() {
        let sensors = Sensors::new("/nonexistent");
        let mut policy = Policy::parse("manual_pause = true\nmax_concurrent_remote_jobs = 1\n[auto_pause]\nhours = [\"22:00-06:00\"]\n").expect("policy");
        let gates = evaluate(&policy, &sensors, 12 * 60, 1);
        assert_eq!(closed(&gates), vec!["manual_pause", "hours", "concurrency"]);
        assert!(gates[3].reason.contains("12:00 local time is outside"), "{:?}", gates[3]);
        policy.manual_pause = false;
        assert!(closed(&evaluate(&policy, &sensors, 23 * 60, 0)).is_empty());
        assert!(closed(&evaluate(&policy, &sensors, 5 * 60 + 59, 0)).is_empty(), "wraps midnight");
    }
}
