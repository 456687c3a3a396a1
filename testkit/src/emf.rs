//! Reading CloudWatch embedded metric format documents out of a function's log, checked
//! against the format's specification as CloudWatch Logs applies it: a document that
//! breaks a rule would be stored as a plain log line and yield no metric.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

/// One metric value set of one document.
#[derive(Debug, Clone, PartialEq)]
pub struct Datum {
    pub namespace: String,
    pub name: String,
    pub unit: Option<String>,
    /// Dimension name → value.
    pub dimensions: BTreeMap<String, String>,
    pub values: Vec<f64>,
}

/// Every metric datum in `lines` (a log; lines that are not EMF documents are skipped),
/// or the first rule a document breaks.
pub fn data(lines: &[String]) -> Result<Vec<Datum>, String> {
    let mut data = Vec::new();
    for line in lines {
        let Ok(Value::Object(root)) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        if !root.contains_key("_aws") {
            continue;
        }
        data.extend(document(&root).map_err(|rule| format!("{rule}: {line}"))?);
    }
    Ok(data)
}

/// The sum of `name`'s values whose dimensions include `dimensions`.
pub fn total(data: &[Datum], name: &str, dimensions: &[(&str, &str)]) -> f64 {
    matching(data, name, dimensions)
        .flat_map(|datum| &datum.values)
        .sum()
}

/// Every value of `name` whose dimensions include `dimensions`.
pub fn values(data: &[Datum], name: &str, dimensions: &[(&str, &str)]) -> Vec<f64> {
    matching(data, name, dimensions)
        .flat_map(|datum| datum.values.iter().copied())
        .collect()
}

fn matching<'a>(
    data: &'a [Datum],
    name: &'a str,
    dimensions: &'a [(&str, &str)],
) -> impl Iterator<Item = &'a Datum> {
    data.iter().filter(move |datum| {
        datum.name == name
            && dimensions
                .iter()
                .all(|(key, value)| datum.dimensions.get(*key).map(String::as_str) == Some(value))
    })
}

/// The specification's rules for one document (`root`).
fn document(root: &Map<String, Value>) -> Result<Vec<Datum>, String> {
    let aws = root["_aws"].as_object().ok_or("_aws is not an object")?;
    let timestamp = aws.get("Timestamp").ok_or("no _aws.Timestamp")?;
    if !timestamp.is_u64() {
        return Err("_aws.Timestamp is not epoch milliseconds".into());
    }
    let directives = aws
        .get("CloudWatchMetrics")
        .and_then(Value::as_array)
        .ok_or("no _aws.CloudWatchMetrics array")?;
    let mut data = Vec::new();
    for directive in directives {
        let namespace = directive["Namespace"]
            .as_str()
            .filter(|namespace| !namespace.is_empty() && namespace.len() <= 1024)
            .ok_or("a directive without a Namespace")?;
        let sets = directive["Dimensions"]
            .as_array()
            .ok_or("a directive without Dimensions")?;
        let metrics = directive["Metrics"]
            .as_array()
            .ok_or("a directive without Metrics")?;
        if metrics.len() > 100 {
            return Err("more than 100 metrics in a directive".into());
        }
        for set in sets {
            let keys = set.as_array().ok_or("a dimension set is not an array")?;
            if keys.len() > 30 {
                return Err("more than 30 dimensions in a set".into());
            }
            let mut dimensions = BTreeMap::new();
            for key in keys {
                let key = key.as_str().ok_or("a dimension key is not a string")?;
                let value = root
                    .get(key)
                    .and_then(Value::as_str)
                    .ok_or_else(|| format!("dimension {key} has no string value at the root"))?;
                dimensions.insert(key.to_owned(), value.to_owned());
            }
            for metric in metrics {
                let name = metric["Name"]
                    .as_str()
                    .filter(|name| !name.is_empty() && name.len() <= 1024)
                    .ok_or("a metric without a Name")?;
                let values = match root.get(name) {
                    Some(Value::Number(number)) => vec![number.as_f64().unwrap_or(f64::NAN)],
                    Some(Value::Array(values)) if values.len() <= 100 => values
                        .iter()
                        .map(|value| value.as_f64().ok_or("a non-numeric value"))
                        .collect::<Result<_, _>>()?,
                    Some(Value::Array(_)) => return Err(format!("{name}: over 100 values")),
                    _ => return Err(format!("{name} has no numeric value at the root")),
                };
                data.push(Datum {
                    namespace: namespace.to_owned(),
                    name: name.to_owned(),
                    unit: metric["Unit"].as_str().map(str::to_owned),
                    dimensions: dimensions.clone(),
                    values,
                });
            }
        }
    }
    Ok(data)
}
