//! The crate's top-level modules form no import cycle: the folders under
//! `src/` show one flow, so no module may reach back to one that reaches it.
//!
//! A module's imports are the `crate::<module>` paths in its files (comment
//! lines aside); paths through `super::` stay inside a module and are not read.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

/// Where one module names another: the file and the line, for the report.
#[derive(Debug)]
struct Evidence {
    file: String,
    line: usize,
    text: String,
    /// Whether the line lies in a file's closing `#[cfg(test)] mod ... {`.
    in_tests: bool,
}

/// For each top-level module, the other top-level modules it names, with where.
type Imports = BTreeMap<String, BTreeMap<String, Vec<Evidence>>>;

/// For each node, the nodes it has an edge to.
type Graph = BTreeMap<String, BTreeSet<String>>;

/// The first identifier of each path after `crate::` in `code`, with its byte
/// offset: one for `crate::dedup::Dedup`, one per item for
/// `crate::{config::Settings, metrics}`, a group spanning lines included.
fn named_modules(code: &str) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    let mut from = 0;
    while let Some(at) = code[from..].find("crate::") {
        let before = code[..from + at].chars().next_back();
        from += at + "crate::".len();
        // `my_crate::` is another path; `$crate::` (in macros) is ours.
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        if code[from..].starts_with('{') {
            found.extend(group_heads(code, from + 1));
        } else {
            found.push((from, identifier(&code[from..])));
        }
    }
    found.retain(|(_, name)| !name.is_empty());
    found
}

/// The head identifier of every item in the `{...}` use group opening at
/// `start`, with its offset, up to the group's closing brace.
fn group_heads(code: &str, start: usize) -> Vec<(usize, String)> {
    let head = |at: usize| {
        let item = code[at..].trim_start();
        let offset = code.len() - item.len();
        (offset, identifier(item))
    };
    let mut heads = vec![head(start)];
    let mut depth = 0_usize;
    for (at, c) in code[start..].char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => break,
            '}' => depth -= 1,
            ',' if depth == 0 => heads.push(head(start + at + 1)),
            _ => {}
        }
    }
    heads
}

/// The identifier `text` starts with (empty when it starts with none).
fn identifier(text: &str) -> String {
    text.chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect()
}

/// `text` with comment lines blanked, so their mentions of a module are not
/// read as imports and every offset keeps its line.
fn without_comment_lines(text: &str) -> String {
    text.lines()
        .map(|line| {
            if line.trim_start().starts_with("//") {
                ""
            } else {
                line
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The line (from 1) where the crate's one closing test module starts, if any:
/// a `#[cfg(test)]` followed by `mod ... {`.
fn first_test_line(lines: &[&str]) -> Option<usize> {
    lines
        .windows(2)
        .position(|pair| {
            let next = pair[1].trim();
            pair[0].trim() == "#[cfg(test)]" && next.starts_with("mod ") && next.ends_with('{')
        })
        .map(|index| index + 1)
}

/// Every `.rs` file under `dir`, in a stable order.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut entries: Vec<_> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|entry| entry.expect("a directory entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            files.extend(rust_files(&path));
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            files.push(path);
        }
    }
    files
}

/// The top-level module a file under `src/` belongs to; `None` for the crate
/// roots (`lib.rs` only declares modules, `main.rs` is the binary's crate).
fn top_level_module(src: &Path, file: &Path) -> Option<String> {
    let relative = file.strip_prefix(src).expect("a file under src/");
    let first = relative.components().next()?.as_os_str().to_str()?;
    match first {
        "lib.rs" | "main.rs" => None,
        name => Some(name.trim_end_matches(".rs").to_owned()),
    }
}

/// Reads every file under `src` and records which top-level modules each one names.
fn imports_under(src: &Path) -> Imports {
    let files: Vec<(PathBuf, String)> = rust_files(src)
        .into_iter()
        .filter_map(|file| top_level_module(src, &file).map(|module| (file, module)))
        .collect();
    let modules: BTreeSet<&str> = files.iter().map(|(_, module)| module.as_str()).collect();
    let mut imports = Imports::new();
    for (file, module) in &files {
        let text = fs::read_to_string(file)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", file.display()));
        let named = imports.entry(module.clone()).or_default();
        let shown = file
            .strip_prefix(src.parent().unwrap_or(src))
            .unwrap_or(file);
        let lines: Vec<&str> = text.lines().collect();
        // The crate keeps unit tests in one module at the end of a file.
        let tests_from = first_test_line(&lines).unwrap_or(usize::MAX);
        let code = without_comment_lines(&text);
        for (offset, other) in named_modules(&code) {
            if other == *module || !modules.contains(other.as_str()) {
                continue;
            }
            let line = code[..offset].matches('\n').count() + 1;
            named.entry(other).or_default().push(Evidence {
                file: shown.display().to_string(),
                line,
                text: lines[line - 1].trim().to_owned(),
                in_tests: line >= tests_from,
            });
        }
    }
    imports
}

/// The nodes `start` reaches through one edge or more (depth first).
fn reachable(graph: &Graph, start: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut stack: Vec<&str> = vec![start];
    while let Some(node) = stack.pop() {
        for next in graph.get(node).into_iter().flatten() {
            if seen.insert(next.clone()) {
                stack.push(next);
            }
        }
    }
    seen
}

/// The groups of nodes that all reach each other: every import cycle lies in one.
fn cycles(graph: &Graph) -> Vec<BTreeSet<String>> {
    let reach: BTreeMap<&str, BTreeSet<String>> = graph
        .keys()
        .map(|node| (node.as_str(), reachable(graph, node)))
        .collect();
    let mut placed = BTreeSet::new();
    let mut groups = Vec::new();
    for (node, reached) in &reach {
        if placed.contains(*node) || !reached.contains(*node) {
            continue;
        }
        let group: BTreeSet<String> = reached
            .iter()
            .filter(|other| reach.get(other.as_str()).is_some_and(|r| r.contains(*node)))
            .cloned()
            .collect();
        placed.extend(group.iter().cloned());
        groups.push(group);
    }
    groups
}

/// A shortest way from `from` back to itself inside `group`, as `a -> b -> a`.
fn one_cycle(graph: &Graph, group: &BTreeSet<String>, from: &str) -> Vec<String> {
    let mut came_from: BTreeMap<&str, &str> = BTreeMap::new();
    let mut frontier = vec![from];
    while !frontier.is_empty() {
        let mut next_frontier = Vec::new();
        for node in frontier {
            for next in graph.get(node).into_iter().flatten() {
                if !group.contains(next) {
                    continue;
                }
                if next == from {
                    let mut path = vec![from.to_owned(), node.to_owned()];
                    let mut at = node;
                    while at != from {
                        at = came_from[at];
                        path.push(at.to_owned());
                    }
                    path.reverse();
                    return path;
                }
                if !came_from.contains_key(next.as_str()) {
                    came_from.insert(next, node);
                    next_frontier.push(next.as_str());
                }
            }
        }
        frontier = next_frontier;
    }
    vec![from.to_owned()]
}

/// The report for the cycles in `imports`: each group, one cycle in it, and
/// every import inside the group with its file and line.
fn describe_cycles(imports: &Imports) -> Option<String> {
    let graph: Graph = imports
        .iter()
        .map(|(module, named)| (module.clone(), named.keys().cloned().collect()))
        .collect();
    let groups = cycles(&graph);
    if groups.is_empty() {
        return None;
    }
    let mut report = format!(
        "{} import cycle(s) between top-level modules of src/:\n",
        groups.len()
    );
    for (number, group) in groups.iter().enumerate() {
        let members: Vec<&str> = group.iter().map(String::as_str).collect();
        let first = members[0];
        let _ = writeln!(
            report,
            "\n{}. {{{}}}, e.g. {}",
            number + 1,
            members.join(", "),
            one_cycle(&graph, group, first).join(" -> ")
        );
        let mutual: Vec<String> = members
            .iter()
            .flat_map(|module| imports[*module].keys().map(move |other| (*module, other)))
            .filter(|(module, other)| {
                module < &other.as_str() && imports[other.as_str()].contains_key(*module)
            })
            .map(|(module, other)| format!("{module} <-> {other}"))
            .collect();
        if !mutual.is_empty() {
            let _ = writeln!(report, "   importing each other: {}", mutual.join(", "));
        }
        for module in &members {
            for (other, evidence) in &imports[*module] {
                if !group.contains(other) {
                    continue;
                }
                let _ = writeln!(report, "   {module} -> {other}");
                for place in evidence {
                    let tests = if place.in_tests { "  (test code)" } else { "" };
                    let _ = writeln!(
                        report,
                        "      {}:{}  {}{tests}",
                        place.file, place.line, place.text
                    );
                }
            }
        }
    }
    Some(report)
}

#[test]
fn top_level_modules_import_each_other_without_cycles() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    if let Some(report) = describe_cycles(&imports_under(&src)) {
        panic!("{report}");
    }
}

#[test]
fn the_dedup_policy_reads_mpc_answers_through_the_domain_not_the_http_client() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let imports = imports_under(&src);
    let dedup = imports.get("dedup").expect("src/dedup exists");
    if let Some(evidence) = dedup.get("upstream") {
        let lines: Vec<String> = evidence
            .iter()
            .map(|e| format!("{}:{}  {}", e.file, e.line, e.text))
            .collect();
        panic!(
            "dedup imports the MPC client module (upstream); what an MPC answer means \
             lives in domain::mpc_reply:\n{}",
            lines.join("\n")
        );
    }
}

fn graph(edges: &[(&str, &str)]) -> Graph {
    let mut graph = Graph::new();
    for (from, to) in edges {
        graph
            .entry((*from).to_owned())
            .or_default()
            .insert((*to).to_owned());
        graph.entry((*to).to_owned()).or_default();
    }
    graph
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|name| (*name).to_owned()).collect()
}

#[test]
fn a_cycle_through_three_modules_is_found_and_modules_outside_it_are_not() {
    let g = graph(&[
        ("http", "dedup"),
        ("dedup", "metrics"),
        ("metrics", "http"),
        ("startup", "http"),
        ("metrics", "clock"),
    ]);
    assert_eq!(cycles(&g), vec![set(&["dedup", "http", "metrics"])]);
    assert_eq!(
        one_cycle(&g, &set(&["dedup", "http", "metrics"]), "dedup"),
        ["dedup", "metrics", "http", "dedup"]
    );
}

#[test]
fn two_modules_importing_each_other_are_a_cycle() {
    let g = graph(&[("gate", "startup"), ("startup", "gate"), ("gate", "config")]);
    assert_eq!(cycles(&g), vec![set(&["gate", "startup"])]);
    assert_eq!(
        one_cycle(&g, &set(&["gate", "startup"]), "gate"),
        ["gate", "startup", "gate"]
    );
}

#[test]
fn separate_cycles_are_reported_separately() {
    let g = graph(&[("a", "b"), ("b", "a"), ("b", "c"), ("c", "d"), ("d", "c")]);
    assert_eq!(cycles(&g), vec![set(&["a", "b"]), set(&["c", "d"])]);
}

#[test]
fn a_layered_graph_has_no_cycle() {
    // A diamond: two ways down to the same module are not a cycle.
    let g = graph(&[
        ("startup", "http"),
        ("startup", "retrieval"),
        ("http", "retrieval"),
        ("retrieval", "config"),
        ("http", "config"),
    ]);
    assert!(cycles(&g).is_empty(), "{:?}", cycles(&g));
}

fn names(code: &str) -> Vec<String> {
    named_modules(code)
        .into_iter()
        .map(|(_, name)| name)
        .collect()
}

#[test]
fn imports_are_read_from_plain_and_grouped_paths_but_not_from_other_crates() {
    assert_eq!(names("use crate::dedup::{Dedup, Outcome};"), ["dedup"]);
    assert_eq!(
        names("use crate::{config::Settings, metrics::{self, Metrics}, clock};"),
        ["config", "metrics", "clock"]
    );
    assert_eq!(
        names(
            "use crate::{\n    audit::AuditLog,\n    quota::{Quota, Tier},\n};\nuse crate::gate;"
        ),
        ["audit", "quota", "gate"]
    );
    assert_eq!(
        names("let s = crate::config::Settings::load(None)?; crate::metrics::x();"),
        ["config", "metrics"]
    );
    assert_eq!(names("$crate::metrics::record!()"), ["metrics"]);
    assert!(names("use mpc_action_gateway::config::Settings;").is_empty());
    assert!(names("use other_crate::gate;").is_empty());
}

#[test]
fn the_report_names_each_import_in_a_cycle_with_its_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    fs::create_dir_all(src.join("gate")).unwrap();
    fs::write(src.join("lib.rs"), "pub mod gate;\npub mod startup;\n").unwrap();
    fs::write(
        src.join("gate/mod.rs"),
        "//! Not an import: crate::startup\nuse crate::startup::Application;\nuse crate::label::Label;\n",
    )
    .unwrap();
    fs::write(
        src.join("startup.rs"),
        "#[cfg(test)]\nmod fixtures;\nuse crate::{gate::Gate};\n\n\
         #[cfg(test)]\nmod tests {\n    use crate::gate::tests;\n}\n",
    )
    .unwrap();
    fs::write(src.join("clock.rs"), "use crate::startup;\n").unwrap();
    fs::write(
        src.join("label.rs"),
        "use crate::{\n    audit::Entry,\n    gate::Gate,\n};\n",
    )
    .unwrap();

    let report = describe_cycles(&imports_under(&src)).expect("a cycle");
    assert!(
        report.contains("{gate, label, startup}, e.g. gate -> label -> gate"),
        "{report}"
    );
    assert!(
        report.contains("src/gate/mod.rs:2  use crate::startup::Application;"),
        "{report}"
    );
    assert!(
        report.contains("src/startup.rs:3  use crate::{gate::Gate};\n"),
        "{report}"
    );
    assert!(
        report.contains("src/startup.rs:7  use crate::gate::tests;  (test code)"),
        "{report}"
    );
    assert!(
        report.contains("importing each other: gate <-> label, gate <-> startup\n"),
        "{report}"
    );
    assert!(
        !report.contains("gate/mod.rs:1"),
        "comments are not imports: {report}"
    );
    assert!(
        !report.contains("clock"),
        "clock is outside the cycle: {report}"
    );

    assert!(report.contains("src/label.rs:3  gate::Gate,\n"), "{report}");

    fs::write(src.join("startup.rs"), "pub struct Application;\n").unwrap();
    fs::write(src.join("label.rs"), "use crate::clock;\n").unwrap();
    assert_eq!(describe_cycles(&imports_under(&src)), None);
}
