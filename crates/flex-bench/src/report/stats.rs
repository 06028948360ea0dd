//! flex's own statistics (`FLEX_STATS`) after a flex-side sample.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

/// What flex's stats file said after one flex-side sample.
#[derive(Clone, Debug, Default, Serialize)]
pub(crate) struct FlexStats {
    /// Lines (processes) in the stats file.
    pub processes: usize,
    pub served: BTreeMap<String, u64>,
    pub passthrough: BTreeMap<String, u64>,
    /// Lines that were not JSON objects.
    pub unparsed: usize,
    /// Top-level numeric fields (bytes_read, maps, ...), summed over the processes.
    pub counters: BTreeMap<String, f64>,
    /// The `fallbacks` maps (reason -> count), summed.
    pub fallbacks: BTreeMap<String, u64>,
}

/// Reads a FLEX_STATS file: one JSON object per process, each with `served` and
/// `passthrough` maps of call name to count; anything else is ignored. `None` if the
/// file is missing or empty.
pub(crate) fn read_stats(path: &Path) -> Option<FlexStats> {
    let text = std::fs::read_to_string(path).ok()?;
    let mut st = FlexStats::default();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let Ok(serde_json::Value::Object(o)) = serde_json::from_str::<serde_json::Value>(line)
        else {
            st.unparsed += 1;
            continue;
        };
        st.processes += 1;
        for (k, v) in &o {
            if let Some(x) = v.as_f64() {
                *st.counters.entry(k.clone()).or_default() += x;
            }
        }
        if let Some(serde_json::Value::Object(m)) = o.get("fallbacks") {
            for (why, n) in m {
                *st.fallbacks.entry(why.clone()).or_default() += n.as_u64().unwrap_or(1);
            }
        }
        for (key, map) in [
            ("served", &mut st.served),
            ("passthrough", &mut st.passthrough),
        ] {
            if let Some(serde_json::Value::Object(m)) = o.get(key) {
                for (call, n) in m {
                    if let Some(n) = n.as_u64().or_else(|| n.as_f64().map(|f| f as u64)) {
                        *map.entry(call.clone()).or_default() += n;
                    }
                }
            }
        }
    }
    (st.processes > 0 || st.unparsed > 0).then_some(st)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_are_read_defensively() {
        let dir = std::env::temp_dir().join(format!("flexbench-stats-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("s.json");
        assert!(read_stats(&p).is_none());
        std::fs::write(
            &p,
            "{\"pid\":1,\"served\":{\"pread64\":10,\"open\":1},\"passthrough\":{\"read\":2}}\n\
             not json\n\
             {\"served\":{\"pread64\":5},\"other\":[1,2]}\n",
        )
        .unwrap();
        let s = read_stats(&p).unwrap();
        assert_eq!(s.processes, 2);
        assert_eq!(s.unparsed, 1);
        assert_eq!(s.served["pread64"], 15);
        assert_eq!(s.passthrough["read"], 2);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
