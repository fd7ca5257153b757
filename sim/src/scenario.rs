//! Scenarios are data: `scenarios/*.toml` files describe the cluster, the workload and the
//! faults of a simulation, so new situations are written as files, not code.

use serde::Deserialize;

/// One simulation scenario, as a `scenarios/*.toml` file describes it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// A short name, used in reports.
    pub name: String,
    /// The default seed (a command-line seed overrides it).
    pub seed: u64,
    /// How many members the cluster has.
    pub members: usize,
    /// What the clients do.
    pub workload: Workload,
    /// What goes wrong.
    #[serde(default)]
    pub faults: Faults,
}

/// The client workload.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Workload {
    /// How many puts the client issues.
    pub writes: u32,
    /// How many distinct keys the puts go to.
    pub keys: u32,
    /// Simulated think time between writes cycles through `0..think_time_max_ms`.
    #[serde(default)]
    pub think_time_max_ms: u64,
}

/// Faults to inject. Empty for now; each fault kind arrives with the simulator's explorer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Faults {}

/// Why a scenario could not be loaded.
#[derive(Debug)]
pub struct ScenarioError(pub String);

impl std::fmt::Display for ScenarioError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ScenarioError {}

impl Scenario {
    /// Parses a scenario from TOML text and checks that it makes sense.
    pub fn parse(text: &str) -> Result<Scenario, ScenarioError> {
        let s: Scenario =
            toml::from_str(text).map_err(|e| ScenarioError(format!("scenario: {e}")))?;
        if s.members == 0 || s.members > 9 {
            return Err(ScenarioError(format!(
                "scenario {}: members must be 1 to 9, not {}",
                s.name, s.members
            )));
        }
        if s.workload.keys == 0 {
            return Err(ScenarioError(format!(
                "scenario {}: workload.keys must be at least 1",
                s.name
            )));
        }
        Ok(s)
    }

    /// Loads `scenarios/NAME.toml` from the repository.
    pub fn load(name: &str) -> Result<Scenario, ScenarioError> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join("scenarios")
            .join(format!("{name}.toml"));
        let text = std::fs::read_to_string(&path)
            .map_err(|e| ScenarioError(format!("{}: {e}", path.display())))?;
        Scenario::parse(&text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_smoke_scenario_loads() {
        let s = Scenario::load("smoke").unwrap();
        assert_eq!(s.name, "smoke");
        assert_eq!(s.members, 1);
        assert_eq!(s.workload.writes, 50);
        assert_eq!(s.workload.keys, 7);
    }

    #[test]
    fn bad_scenarios_are_refused_with_a_reason() {
        let e = Scenario::parse(
            "name = \"x\"\nseed = 1\nmembers = 0\n[workload]\nwrites = 1\nkeys = 1\n",
        )
        .unwrap_err();
        assert!(e.0.contains("members must be 1 to 9"), "{e}");
        let e = Scenario::parse(
            "name = \"x\"\nseed = 1\nmembers = 1\nbogus = 2\n[workload]\nwrites = 1\nkeys = 1\n",
        )
        .unwrap_err();
        assert!(e.0.contains("bogus"), "{e}");
        let e = Scenario::parse("name = \"x\"").unwrap_err();
        assert!(e.0.contains("missing field"), "{e}");
    }
}
