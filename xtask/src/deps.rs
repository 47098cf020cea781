//! The dependency rules between the workspace's crates, held against
//! `cargo metadata`: ARCHITECTURE.md's table ("Dependency rules") must say
//! exactly which workspace crate depends on which, and a few arrows are
//! forbidden whatever the table says.

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};
    use std::path::Path;
    use std::process::Command;

    use serde_json::Value;

    type Graph = BTreeMap<String, (BTreeSet<String>, BTreeSet<String>)>;

    fn root() -> &'static Path {
        Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace root")
    }

    fn host() -> String {
        let out = Command::new("rustc").arg("-vV").output().expect("run rustc -vV");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.lines().find_map(|l| l.strip_prefix("host: ")).expect("rustc -vV names the host").to_owned()
    }

    fn metadata(no_deps: bool) -> Value {
        let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        cmd.args(["metadata", "--format-version", "1", "--locked"]).current_dir(root());
        if no_deps {
            cmd.arg("--no-deps");
        } else {
            // The host's graph only: other platforms' crates are not downloaded.
            cmd.args(["--filter-platform", &host()]);
        }
        let out = cmd.output().expect("run cargo metadata");
        assert!(out.status.success(), "cargo metadata: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).expect("cargo metadata prints JSON")
    }

    /// Workspace crate → (workspace crates it depends on, those only its
    /// tests and benches depend on), from `cargo metadata`.
    fn actual() -> Graph {
        let meta = metadata(true);
        let packages = meta["packages"].as_array().unwrap();
        let ours: BTreeSet<&str> = packages.iter().map(|p| p["name"].as_str().unwrap()).collect();
        let mut graph = Graph::new();
        for p in packages {
            let (mut normal, mut dev) = (BTreeSet::new(), BTreeSet::new());
            for d in p["dependencies"].as_array().unwrap() {
                let name = d["name"].as_str().unwrap();
                if !ours.contains(name) {
                    continue;
                }
                match d["kind"].as_str() {
                    Some("dev") => dev.insert(name.to_owned()),
                    _ => normal.insert(name.to_owned()),
                };
            }
            graph.insert(p["name"].as_str().unwrap().to_owned(), (normal, dev));
        }
        graph
    }

    /// The table under "Dependency rules" in ARCHITECTURE.md:
    /// `| crate | depends on | and in its tests |`, crates in backticks, `—` for none.
    fn documented(text: &str) -> Graph {
        let start = text.find("<!-- dependency-rules -->").expect("ARCHITECTURE.md marks its dependency table");
        let names = |cell: &str| -> BTreeSet<String> {
            cell.split(',')
                .map(|s| s.trim().trim_matches('`').to_owned())
                .filter(|s| !s.is_empty() && s != "—")
                .collect()
        };
        let mut graph = Graph::new();
        for line in text[start..].lines().skip(1).skip_while(|l| !l.starts_with('|')) {
            if !line.starts_with('|') {
                break;
            }
            let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
            if cells.len() != 3 || cells[0] == "crate" || cells[0].starts_with("---") {
                continue;
            }
            graph.insert(cells[0].trim_matches('`').to_owned(), (names(cells[1]), names(cells[2])));
        }
        graph
    }

    /// What is wrong with `graph`, whatever the table says.
    fn forbidden(graph: &Graph) -> Vec<String> {
        let mut problems = Vec::new();
        let all = |name: &str| -> BTreeSet<String> {
            graph.get(name).map(|(n, d)| n.union(d).cloned().collect()).unwrap_or_default()
        };
        // The cores depend on nothing of ours; the rate limiter stays usable alone.
        for core in ["ingest-model", "ingest-auth", "ingest-ratelimit", "ingest-migration", "ingest-pricing"] {
            if let Some((normal, _)) = graph.get(core)
                && !normal.is_empty()
            {
                problems.push(format!("{core} depends on {normal:?}; it must depend on nothing of ours"));
            }
        }
        // Adapters never see storage or each other, not even in their tests
        // (so `cargo tree -p ingest-nats` shows no SeaORM).
        let adapters = ["ingest-http", "ingest-nats", "ingest-redis"];
        for adapter in adapters {
            for dep in all(adapter) {
                if dep == "ingest-storage" || dep == "ingest-testkit" || adapters.contains(&dep.as_str()) {
                    problems.push(format!("{adapter} → {dep}: adapters reach storage only through model's traits"));
                }
            }
        }
        for (name, (normal, _)) in graph {
            for dep in normal {
                if dep == "ingestd" || (dep == "ingest-testkit" && name != "ingestd-tests") {
                    problems.push(format!("{name} → {dep}: only tests may depend on it"));
                }
                if dep == "ingest-broker"
                    && !["ingest-nats", "ingest-redis", "ingestd", "ingest-testkit"].contains(&name.as_str())
                {
                    problems.push(format!("{name} → ingest-broker: only stream sources and their composition use it"));
                }
            }
        }
        problems
    }

    #[test]
    fn workspace_dependencies_follow_the_rules() {
        let graph = actual();
        let problems = forbidden(&graph);
        assert!(problems.is_empty(), "forbidden arrows: {problems:#?}");
        let text = std::fs::read_to_string(root().join("ARCHITECTURE.md")).unwrap();
        let table = documented(&text);
        assert_eq!(
            table.keys().collect::<Vec<_>>(),
            graph.keys().collect::<Vec<_>>(),
            "ARCHITECTURE.md's dependency table names every workspace crate"
        );
        for (name, (normal, dev)) in &graph {
            let (doc_normal, doc_dev) = &table[name];
            assert_eq!(normal, doc_normal, "{name}: its dependencies vs ARCHITECTURE.md");
            assert_eq!(dev, doc_dev, "{name}: its test-only dependencies vs ARCHITECTURE.md");
        }
    }

    /// The rules fail on a forbidden arrow (planted here, not in a manifest).
    #[test]
    fn a_forbidden_arrow_is_found() {
        let mut graph = actual();
        graph.get_mut("ingest-nats").unwrap().0.insert("ingest-storage".into());
        graph.get_mut("ingest-ratelimit").unwrap().0.insert("ingest-model".into());
        let problems = forbidden(&graph);
        assert_eq!(problems.len(), 2, "{problems:#?}");
    }

    /// `cargo tree -p ingest-nats` / `-p ingest-redis` (dependencies of every
    /// kind, as `cargo tree` shows them): no SeaORM, no sqlx.
    #[test]
    fn stream_adapters_do_not_compile_an_orm() {
        let meta = metadata(false);
        let nodes: BTreeMap<&str, &Value> =
            meta["resolve"]["nodes"].as_array().unwrap().iter().map(|n| (n["id"].as_str().unwrap(), n)).collect();
        let name_of = |id: &str| -> String {
            meta["packages"]
                .as_array()
                .unwrap()
                .iter()
                .find(|p| p["id"] == id)
                .map(|p| p["name"].as_str().unwrap().to_owned())
                .unwrap()
        };
        for adapter in ["ingest-nats", "ingest-redis"] {
            let root_id = meta["packages"].as_array().unwrap().iter().find(|p| p["name"] == adapter).unwrap()["id"]
                .as_str()
                .unwrap();
            let mut seen = BTreeSet::new();
            let mut todo = vec![root_id];
            while let Some(id) = todo.pop() {
                if !seen.insert(id) {
                    continue;
                }
                for dep in nodes[id]["deps"].as_array().unwrap() {
                    // Dev-dependencies count only at the root, as in `cargo tree`.
                    let dev_only = dep["dep_kinds"].as_array().unwrap().iter().all(|k| k["kind"] == "dev");
                    if dev_only && id != root_id {
                        continue;
                    }
                    todo.push(dep["pkg"].as_str().unwrap());
                }
            }
            let orm: Vec<String> = seen
                .iter()
                .map(|id| name_of(id))
                .filter(|n| n.starts_with("sea-orm") || n.starts_with("sqlx"))
                .collect();
            assert!(orm.is_empty(), "{adapter} compiles {orm:?}");
        }
    }
}
