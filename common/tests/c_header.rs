// SPDX-License-Identifier: MIT
//! The C header `include/uapi/linux/hyper_dmabuf.h` says what
//! `common::uapi::layout` says: every record's `sizeof`, every field's
//! `offsetof`, `sizeof` and type, every constant's value.
//!
//! The test writes a C program from the table, compiles it against the
//! header with the system's `cc` and runs it; the program prints what the
//! compiler made of the header, which is compared with the table. Every
//! difference is reported, not only the first.
//!
//! The 32-bit layout: the same checks, as `_Static_assert`s, are compiled
//! with `cc -m32 -fsyntax-only` (compiling is enough, and linking a 32-bit
//! program would need a 32-bit libc that a 64-bit host rarely has). Both
//! programs also assert that no struct has padding the compiler inserted:
//! its members' sizes add up to its `sizeof`. Should the compiler not
//! target i386 at all, that assertion on the 64-bit build and the table's
//! own compile-time rules (every field naturally aligned, every size a
//! multiple of 8) still make the 32-bit layout the same; the test then
//! says it skipped the i386 build.
//!
//! The header is also checked the other way (every `#define` and struct it
//! has is in the table), the tables drawn in the Rust doc comments against
//! the table, and docs/uapi.md's C records and constant tables against the
//! header and the table.

use hyper_dmabuf_common::uapi::layout::{CType, Record, Value, CONSTANTS, RECORDS};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// What `-I` points at: the header is `<linux/hyper_dmabuf.h>` there, as
/// it would be once installed in /usr/include.
fn include_dir() -> PathBuf {
    repo().join("include/uapi")
}

fn header_text() -> String {
    let path = include_dir().join("linux/hyper_dmabuf.h");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// One fact about the header: a C integer constant expression and the
/// value the table gives it.
struct Check {
    label: String,
    expr: String,
    expected: u64,
}

/// The C type's name, and a pointer to it spelled so that `_Generic`
/// matches it exactly.
fn c_type(ty: CType) -> (String, String) {
    match ty {
        CType::U32 => ("__u32".into(), "__u32 *".into()),
        CType::S32 => ("__s32".into(), "__s32 *".into()),
        CType::U64 => ("__u64".into(), "__u64 *".into()),
        CType::Bytes(len) => (format!("__u8[{len}]"), format!("__u8 (*)[{len}]")),
        CType::Id => ("struct hdmabuf_id".into(), "struct hdmabuf_id *".into()),
    }
}

fn member(record: &Record, field: &str) -> String {
    format!("((struct {} *)0)->{field}", record.name)
}

fn checks() -> Vec<Check> {
    let mut checks = Vec::new();
    for record in RECORDS {
        let tag = format!("struct {}", record.name);
        checks.push(Check {
            label: format!("sizeof({tag})"),
            expr: format!("sizeof({tag})"),
            expected: record.size as u64,
        });
        for field in record.fields {
            let at = format!("{tag}.{}", field.name);
            checks.push(Check {
                label: format!("offsetof({at})"),
                expr: format!("offsetof({tag}, {})", field.name),
                expected: field.offset as u64,
            });
            checks.push(Check {
                label: format!("sizeof({at})"),
                expr: format!("sizeof({})", member(record, field.name)),
                expected: field.size() as u64,
            });
            let (name, pointer) = c_type(field.ty);
            checks.push(Check {
                label: format!("{at} is {name}"),
                expr: format!(
                    "_Generic(&{}, {pointer}: 1, default: 0)",
                    member(record, field.name)
                ),
                expected: 1,
            });
        }
    }
    for constant in CONSTANTS {
        if let Value::Number(value) = constant.value {
            checks.push(Check {
                label: constant.name.into(),
                expr: constant.name.into(),
                expected: value,
            });
        }
    }
    checks
}

/// The includes, and an assertion per struct that its members fill it.
fn prologue() -> String {
    let mut c = String::from(
        "#include <linux/hyper_dmabuf.h>\n#include <stddef.h>\n\n\
         /* No padding the compiler inserted: the members fill each struct. */\n",
    );
    for record in RECORDS {
        let sizes: Vec<String> = record
            .fields
            .iter()
            .map(|f| format!("sizeof({})", member(record, f.name)))
            .collect();
        writeln!(
            c,
            "_Static_assert(sizeof(struct {0}) == {1},\n\t\"struct {0} has implicit padding\");",
            record.name,
            sizes.join(" + ")
        )
        .unwrap();
    }
    c
}

/// A program that prints `label<TAB>value` for every check and every
/// text constant.
fn printing_program(checks: &[Check]) -> String {
    let mut c = prologue();
    c.push_str("#include <stdio.h>\n\nint main(void)\n{\n");
    for check in checks {
        writeln!(
            c,
            "\tprintf(\"%s\\t%llu\\n\", \"{}\", (unsigned long long)({}));",
            check.label, check.expr
        )
        .unwrap();
    }
    for constant in CONSTANTS {
        if let Value::Text(_) = constant.value {
            writeln!(c, "\tprintf(\"%s\\t%s\\n\", \"{0}\", {0});", constant.name).unwrap();
        }
    }
    c.push_str("\treturn 0;\n}\n");
    c
}

/// A translation unit that only compiles if every check holds.
fn asserting_program(checks: &[Check]) -> String {
    let mut c = prologue();
    c.push('\n');
    for check in checks {
        writeln!(
            c,
            "_Static_assert(({}) == {}ULL, \"{}\");",
            check.expr, check.expected, check.label
        )
        .unwrap();
    }
    c
}

const CFLAGS: &[&str] = &["-std=c11", "-Wall", "-Wextra", "-Werror", "-pedantic"];

fn cc() -> String {
    std::env::var("CC").unwrap_or_else(|_| "cc".into())
}

/// Runs the C compiler with `args`.
fn run_cc(args: &[&str]) -> Output {
    Command::new(cc()).args(args).output().unwrap_or_else(|e| {
        panic!(
            "cannot run the C compiler `{}`: {e}; `make deps` \
             (platform/install-deps.sh) installs it",
            cc()
        )
    })
}

fn expect_success(what: &str, output: &Output) {
    assert!(
        output.status.success(),
        "{what} failed ({}):\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("c_header");
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

#[test]
fn the_header_matches_the_table() {
    let checks = checks();
    let source = scratch("layout.c");
    let binary = scratch("layout");
    std::fs::write(&source, printing_program(&checks)).unwrap();
    let include = include_dir();
    let mut args: Vec<&str> = CFLAGS.to_vec();
    args.extend(["-I", include.to_str().unwrap(), "-o"]);
    args.extend([binary.to_str().unwrap(), source.to_str().unwrap()]);
    expect_success("compiling the layout program", &run_cc(&args));
    let output = Command::new(&binary).output().unwrap();
    expect_success("the layout program", &output);

    let printed: BTreeMap<String, String> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .filter_map(|line| line.split_once('\t'))
        .map(|(label, value)| (label.to_string(), value.to_string()))
        .collect();
    let expected = checks
        .iter()
        .map(|c| (c.label.clone(), c.expected.to_string()))
        .chain(CONSTANTS.iter().filter_map(|c| match c.value {
            Value::Text(text) => Some((c.name.to_string(), text.to_string())),
            Value::Number(_) => None,
        }));
    let mut wrong = Vec::new();
    let mut compared = 0;
    for (label, value) in expected {
        compared += 1;
        match printed.get(&label) {
            Some(got) if *got == value => {}
            got => wrong.push(format!(
                "  {label}: the header gives {got:?}, the table {value}"
            )),
        }
    }
    assert!(
        wrong.is_empty(),
        "include/uapi/linux/hyper_dmabuf.h differs from common::uapi::layout:\n{}",
        wrong.join("\n")
    );
    assert!(compared > 150, "only {compared} facts compared");
}

/// The flags that let `cc` compile for i386, if it can: `-m32`, and where
/// only the 64-bit Linux headers are installed (no gcc-multilib), those:
/// Linux has one set of x86 uapi `asm/` headers for both, choosing by
/// `__i386__` inside.
fn i386_flags() -> Option<Vec<String>> {
    let probe = scratch("probe32.c");
    std::fs::write(&probe, "#include <linux/types.h>\n__u64 probe;\n").unwrap();
    let attempt = |extra: &[String]| {
        let mut args = vec!["-m32".to_string(), "-fsyntax-only".into()];
        args.extend_from_slice(extra);
        args.push(probe.to_str().unwrap().into());
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        run_cc(&refs).status.success().then(|| extra.to_vec())
    };
    if let Some(flags) = attempt(&[]) {
        return Some(flags);
    }
    if !cfg!(target_arch = "x86_64") {
        return None;
    }
    let multiarch = run_cc(&["-print-multiarch"]);
    let multiarch = String::from_utf8(multiarch.stdout).ok()?;
    let asm_dir = format!("/usr/include/{}", multiarch.trim());
    attempt(&["-idirafter".into(), asm_dir])
}

#[test]
fn the_header_matches_the_table_for_32_bit_processes() {
    let Some(extra) = i386_flags() else {
        eprintln!(
            "c_header: `{} -m32` cannot compile for i386 here; the 32-bit layout rests \
             on the no-padding assertions and the table's alignment rules",
            cc()
        );
        return;
    };
    let source = scratch("layout32.c");
    std::fs::write(&source, asserting_program(&checks())).unwrap();
    let include = include_dir();
    let mut args: Vec<&str> = CFLAGS.to_vec();
    args.extend(["-m32", "-fsyntax-only", "-I", include.to_str().unwrap()]);
    args.extend(extra.iter().map(String::as_str));
    args.push(source.to_str().unwrap());
    expect_success(
        "the 32-bit layout check (each failed assertion names the field)",
        &run_cc(&args),
    );
}

/// The names `#define`d in `text` and the tags of the structs it defines.
fn names_defined(text: &str) -> (Vec<String>, Vec<String>) {
    let mut defines = Vec::new();
    let mut structs = Vec::new();
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["#define", name, ..] => defines.push(name.to_string()),
            ["struct", tag, "{", ..] => structs.push(tag.to_string()),
            _ => {}
        }
    }
    (defines, structs)
}

#[test]
fn everything_the_header_defines_is_in_the_table() {
    let (defines, structs) = names_defined(&header_text());
    for name in defines {
        assert!(
            name == "_UAPI_LINUX_HYPER_DMABUF_H" || CONSTANTS.iter().any(|c| c.name == name),
            "the header defines {name}, which common::uapi::layout::CONSTANTS lacks"
        );
    }
    for tag in &structs {
        assert!(
            RECORDS.iter().any(|r| r.name == tag),
            "the header defines struct {tag}, which common::uapi::layout::RECORDS lacks"
        );
    }
    assert_eq!(structs.len(), RECORDS.len());
}

/// A row of a drawn table: offset, size, field name.
type Row = (usize, usize, String);

/// The `offset size field` tables drawn in doc comments, each under the
/// struct named last before it.
fn drawn_tables(source: &str) -> Vec<(String, Vec<Row>)> {
    let mut tables = Vec::new();
    let mut named = None;
    let mut rows: Option<Vec<Row>> = None;
    for line in source.lines() {
        let doc = line.trim_start().trim_start_matches("///").trim();
        if let Some(rest) = doc.split("`struct hdmabuf_").nth(1) {
            named = rest.split('`').next().map(|tag| format!("hdmabuf_{tag}"));
        }
        match (&mut rows, doc) {
            (None, "```text") => rows = Some(Vec::new()),
            (Some(_), "```") => {
                let drawn = rows.take().unwrap();
                if !drawn.is_empty() {
                    let name = named.clone().expect("a drawn table under no struct");
                    tables.push((name, drawn));
                }
            }
            (Some(drawn), _) => {
                let words: Vec<&str> = doc.split_whitespace().collect();
                if let [offset, size, field, ..] = words.as_slice() {
                    if let (Ok(offset), Ok(size)) = (offset.parse(), size.parse()) {
                        drawn.push((offset, size, field.to_string()));
                    }
                }
            }
            _ => {}
        }
    }
    tables
}

#[test]
fn the_tables_drawn_in_the_rust_docs_are_the_layout() {
    let mut drawn = Vec::new();
    for file in ["common/src/uapi.rs", "common/src/id.rs"] {
        let text = std::fs::read_to_string(repo().join(file)).unwrap();
        drawn.extend(drawn_tables(&text));
    }
    for record in RECORDS {
        let tables: Vec<_> = drawn
            .iter()
            .filter(|(name, _)| name == record.name)
            .collect();
        assert_eq!(
            tables.len(),
            1,
            "struct {} drawn {} times",
            record.name,
            tables.len()
        );
        let fields: Vec<Row> = record
            .fields
            .iter()
            .map(|f| (f.offset, f.size(), f.name.to_string()))
            .collect();
        assert_eq!(tables[0].1, fields, "the drawing of struct {}", record.name);
    }
}

fn docs_text() -> String {
    std::fs::read_to_string(repo().join("docs/uapi.md")).unwrap()
}

/// `text` with each line trimmed and every run of blanks made one space.
fn normalized(text: &str) -> String {
    text.lines()
        .map(|line| line.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect::<Vec<_>>()
        .join("\n")
}

/// What the ```c blocks of a Markdown text show: each struct definition
/// (`struct x {` to `};`) and each `#define` line.
fn c_items(markdown: &str) -> Vec<String> {
    let mut items = Vec::new();
    let mut in_c = false;
    let mut open: Option<String> = None;
    for line in markdown.lines() {
        match line.trim() {
            "```c" => in_c = true,
            "```" => in_c = false,
            _ if !in_c => {}
            text if text.starts_with("#define") => items.push(line.to_string()),
            text if text.starts_with("struct ") && text.ends_with('{') => {
                open = Some(format!("{line}\n"));
            }
            text => {
                if let Some(item) = &mut open {
                    item.push_str(line);
                    item.push('\n');
                    if text == "};" {
                        items.extend(open.take());
                    }
                }
            }
        }
    }
    items
}

#[test]
fn the_c_records_shown_in_the_docs_are_the_header() {
    let header = normalized(&header_text());
    let items = c_items(&docs_text());
    for item in &items {
        assert!(
            header.contains(&normalized(item)),
            "docs/uapi.md shows what the header does not say (verbatim, blanks aside):\n{item}"
        );
    }
    for record in RECORDS {
        let opening = format!("struct {} {{", record.name);
        assert!(
            items
                .iter()
                .any(|item| item.trim_start().starts_with(&opening)),
            "docs/uapi.md does not show struct {}",
            record.name
        );
    }
}

/// The value a table cell of the docs gives: `"text"`, `0x…` or decimal.
fn documented_value(cell: &str) -> Value {
    let cell = cell.trim().trim_matches('`');
    if let Some(text) = cell.strip_prefix('"').and_then(|c| c.strip_suffix('"')) {
        // Leaked: a test's few strings, to compare with `Value::Text`.
        return Value::Text(Box::leak(text.to_string().into_boxed_str()));
    }
    let number = match cell.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => cell.parse(),
    };
    Value::Number(number.unwrap_or_else(|_| panic!("docs/uapi.md: `{cell}` is no value")))
}

#[test]
fn the_constants_in_the_docs_tables_are_the_table() {
    let mut documented = Vec::new();
    for line in docs_text().lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let [_, name, value, ..] = cells.as_slice() else {
            continue;
        };
        let Some(name) = name
            .strip_prefix("`HDMABUF_")
            .and_then(|n| n.strip_suffix('`'))
        else {
            continue;
        };
        let name = format!("HDMABUF_{name}");
        let constant = CONSTANTS
            .iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("docs/uapi.md documents {name}, which the table lacks"));
        assert_eq!(
            documented_value(value),
            constant.value,
            "docs/uapi.md: the value of {name}"
        );
        documented.push(name);
    }
    for constant in CONSTANTS {
        assert!(
            documented.iter().any(|name| name == constant.name),
            "docs/uapi.md gives no value for {}",
            constant.name
        );
    }
}
