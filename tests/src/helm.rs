//! Renders a Helm chart without helm: Go templates (gtmpl, a port of Go's text/template) with
//! the part of Helm's context and function set a chart like ours uses: `.Values` (values.yaml
//! deep-merged with overrides), `.Release`, `.Chart`, and `toYaml`, `nindent`, `indent`,
//! `quote`, `default`, `join`, `int64`. A template using anything else fails to render, loudly.

use std::{collections::HashMap, fs, path::Path};

use anyhow::{Context as _, Result, bail};
use gtmpl::{Context, FuncError, Template, Value};
use serde_yaml::Value as Yaml;

/// One rendered template file.
pub struct Rendered {
    pub file: String,
    pub text: String,
}

fn to_gtmpl(yaml: &Yaml) -> Value {
    match yaml {
        Yaml::Null => Value::Nil,
        Yaml::Bool(b) => Value::Bool(*b),
        // Helm reads values through JSON into float64: a number prints as Go prints a float64
        // (1048576 as 1.048576e+06) unless the template converts it (`int64`). The context holds
        // numbers in that printed form so the same template bugs show here.
        Yaml::Number(n) => {
            let f = n.as_f64().unwrap_or_default();
            if f.fract() == 0.0 && f.abs() < 1e6 {
                Value::from(f as i64)
            } else {
                Value::String(go_float(f))
            }
        }
        Yaml::String(s) => Value::String(s.clone()),
        Yaml::Sequence(items) => Value::Array(items.iter().map(to_gtmpl).collect()),
        Yaml::Mapping(map) => Value::Map(
            map.iter()
                .filter_map(|(k, v)| Some((k.as_str()?.to_owned(), to_gtmpl(v))))
                .collect(),
        ),
        Yaml::Tagged(tagged) => to_gtmpl(&tagged.value),
    }
}

fn to_yaml(value: &Value) -> Yaml {
    match value {
        Value::NoValue | Value::Nil | Value::Function(_) => Yaml::Null,
        Value::Bool(b) => Yaml::Bool(*b),
        Value::String(s) => Yaml::String(s.clone()),
        Value::Number(n) => n
            .as_i64()
            .map(Yaml::from)
            .or_else(|| n.as_u64().map(Yaml::from))
            .unwrap_or_else(|| Yaml::from(n.as_f64().unwrap_or_default())),
        Value::Array(items) => Yaml::Sequence(items.iter().map(to_yaml).collect()),
        Value::Map(map) | Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            Yaml::Mapping(
                keys.into_iter()
                    .map(|k| (Yaml::String(k.clone()), to_yaml(&map[k])))
                    .collect(),
            )
        }
    }
}

/// Merges `over` into `base`: maps recursively, everything else replaced.
pub fn merge(base: &mut Yaml, over: &Yaml) {
    match (base, over) {
        (Yaml::Mapping(base), Yaml::Mapping(over)) => {
            for (key, value) in over {
                match base.get_mut(key) {
                    Some(existing) => merge(existing, value),
                    None => {
                        base.insert(key.clone(), value.clone());
                    }
                }
            }
        }
        (base, over) => *base = over.clone(),
    }
}

fn is_empty(value: &Value) -> bool {
    match value {
        Value::NoValue | Value::Nil => true,
        Value::Bool(b) => !b,
        Value::String(s) => s.is_empty(),
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::Array(a) => a.is_empty(),
        Value::Map(m) | Value::Object(m) => m.is_empty(),
        Value::Function(_) => false,
    }
}

fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn arg<'a>(args: &'a [Value], i: usize, name: &str) -> Result<&'a Value, FuncError> {
    args.get(i)
        .ok_or_else(|| FuncError::AtLeastXArgs(name.into(), i + 1))
}

fn count(value: &Value) -> Result<usize, FuncError> {
    match value {
        Value::Number(n) => n
            .as_u64()
            .map(|n| n as usize)
            .ok_or_else(|| FuncError::Generic("indent needs a count".into())),
        _ => Err(FuncError::Generic("indent needs a count".into())),
    }
}

fn to_yaml_fn(args: &[Value]) -> Result<Value, FuncError> {
    let yaml = serde_yaml::to_string(&to_yaml(arg(args, 0, "toYaml")?))
        .map_err(|e| FuncError::Generic(e.to_string()))?;
    Ok(Value::String(yaml.trim_end_matches('\n').to_owned()))
}

fn indent_text(n: usize, s: &str) -> String {
    let pad = " ".repeat(n);
    s.lines()
        .map(|l| format!("{pad}{l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn indent_fn(args: &[Value]) -> Result<Value, FuncError> {
    Ok(Value::String(indent_text(
        count(arg(args, 0, "indent")?)?,
        &text(arg(args, 1, "indent")?),
    )))
}

fn nindent_fn(args: &[Value]) -> Result<Value, FuncError> {
    let n = count(arg(args, 0, "nindent")?)?;
    Ok(Value::String(format!(
        "\n{}",
        indent_text(n, &text(arg(args, 1, "nindent")?))
    )))
}

fn quote_fn(args: &[Value]) -> Result<Value, FuncError> {
    let s = text(arg(args, 0, "quote")?);
    Ok(Value::String(format!(
        "\"{}\"",
        s.replace('\\', "\\\\").replace('"', "\\\"")
    )))
}

/// Go's `%v` of a float64, which is how a Go template prints a Helm value: shortest digits,
/// exponent form from 1e6 up (and below 1e-4), e.g. 1048576 -> `1.048576e+06`.
fn go_float(f: f64) -> String {
    if f != 0.0 && (f.abs() >= 1e6 || f.abs() < 1e-4) {
        let rust = format!("{f:e}");
        let (mantissa, exp) = rust.split_once('e').unwrap_or((&rust, "0"));
        let exp: i32 = exp.parse().unwrap_or_default();
        let sign = if exp < 0 { '-' } else { '+' };
        return format!("{mantissa}e{sign}{:02}", exp.abs());
    }
    format!("{f}")
}

fn int64_fn(args: &[Value]) -> Result<Value, FuncError> {
    match arg(args, 0, "int64")? {
        Value::Number(n) => Ok(Value::from(
            n.as_i64()
                .or_else(|| n.as_u64().map(|u| u as i64))
                .or_else(|| n.as_f64().map(|f| f as i64))
                .unwrap_or_default(),
        )),
        Value::String(s) => Ok(Value::from(s.parse::<f64>().unwrap_or_default() as i64)),
        _ => Ok(Value::from(0i64)),
    }
}

fn default_fn(args: &[Value]) -> Result<Value, FuncError> {
    let fallback = arg(args, 0, "default")?;
    match args.get(1) {
        Some(given) if !is_empty(given) => Ok(given.clone()),
        _ => Ok(fallback.clone()),
    }
}

fn join_fn(args: &[Value]) -> Result<Value, FuncError> {
    let sep = text(arg(args, 0, "join")?);
    match arg(args, 1, "join")? {
        Value::Array(items) => Ok(Value::String(
            items.iter().map(text).collect::<Vec<_>>().join(&sep),
        )),
        other => Ok(Value::String(text(other))),
    }
}

/// Renders every template of the chart in `dir` with `overrides` (YAML) over its values.
pub fn render_chart(
    dir: &Path,
    release: &str,
    namespace: &str,
    overrides: &str,
) -> Result<Vec<Rendered>> {
    let chart: Yaml = serde_yaml::from_str(&fs::read_to_string(dir.join("Chart.yaml"))?)?;
    let mut values: Yaml = serde_yaml::from_str(&fs::read_to_string(dir.join("values.yaml"))?)?;
    let over: Yaml = serde_yaml::from_str(overrides).context("overrides")?;
    if !over.is_null() {
        merge(&mut values, &over);
    }
    let field = |name: &str| {
        chart
            .get(name)
            .and_then(Yaml::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    let context = Value::Map(HashMap::from([
        ("Values".to_owned(), to_gtmpl(&values)),
        (
            "Release".to_owned(),
            Value::Map(HashMap::from([
                ("Name".to_owned(), Value::from(release)),
                ("Namespace".to_owned(), Value::from(namespace)),
                ("Service".to_owned(), Value::from("Helm")),
            ])),
        ),
        (
            "Chart".to_owned(),
            Value::Map(HashMap::from([
                ("Name".to_owned(), Value::from(field("name"))),
                ("Version".to_owned(), Value::from(field("version"))),
                ("AppVersion".to_owned(), Value::from(field("appVersion"))),
            ])),
        ),
    ]));

    let mut files: Vec<_> = fs::read_dir(dir.join("templates"))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    files.sort();
    let mut out = Vec::new();
    for path in files {
        let file = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_owned();
        if file.starts_with('_') {
            bail!("{file}: named templates (include) are outside the supported subset");
        }
        let mut template = Template::default();
        template.add_funcs(&[
            ("toYaml", to_yaml_fn as gtmpl::Func),
            ("nindent", nindent_fn as gtmpl::Func),
            ("indent", indent_fn as gtmpl::Func),
            ("quote", quote_fn as gtmpl::Func),
            ("default", default_fn as gtmpl::Func),
            ("join", join_fn as gtmpl::Func),
            ("int64", int64_fn as gtmpl::Func),
        ]);
        template
            .parse(fs::read_to_string(&path)?)
            .map_err(|e| anyhow::anyhow!("{file}: {e}"))?;
        let text = template
            .render(&Context::from(context.clone()))
            .map_err(|e| anyhow::anyhow!("{file}: {e}"))?;
        out.push(Rendered { file, text });
    }
    Ok(out)
}
