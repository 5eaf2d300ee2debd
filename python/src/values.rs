//! Python values to configurations: a dict of settings becomes the TOML table a file would
//! hold, which the engine's own serde structs read, so keys, defaults and checks are the
//! file's (`EngineConfig::EXAMPLE` lists them).

use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple};
use splice_engine::{EngineConfig, ForwarderConfig};
use toml::{Table, Value};

use crate::errors::{ConfigError, engine_error};

/// Reads a TOML document as a file is read (paths in it are relative to the current
/// directory); errors name the line and the key.
pub(crate) fn config_from_toml(text: &str) -> PyResult<EngineConfig> {
    EngineConfig::from_toml(text, "TOML string").map_err(engine_error)
}

/// Reads the engine's settings (the top-level keys of a file, `forwarder` a list of tables).
pub(crate) fn config_from_settings(settings: &Bound<'_, PyDict>) -> PyResult<EngineConfig> {
    let table = table(settings, "")?;
    let cfg: EngineConfig = Value::Table(table)
        .try_into()
        .map_err(|e| ConfigError::new_err(format!("keyword arguments: {}", one_line(&e))))?;
    cfg.validate("keyword arguments").map_err(engine_error)?;
    Ok(cfg)
}

/// Reads one forwarder's settings (the keys of a `[[forwarder]]` table).
pub(crate) fn forwarder_from_settings(settings: &Bound<'_, PyDict>) -> PyResult<ForwarderConfig> {
    let table = table(settings, "")?;
    let name = match table.get("name") {
        Some(Value::String(n)) => format!("forwarder \"{n}\""),
        _ => "forwarder".to_string(),
    };
    let f: ForwarderConfig = Value::Table(table)
        .try_into()
        .map_err(|e| ConfigError::new_err(format!("{name}: {}", one_line(&e))))?;
    // The whole configuration is checked again when the engine applies it; this check names
    // the forwarder's key first.
    EngineConfig::new()
        .forwarder(f.clone())
        .validate(&name)
        .map_err(engine_error)?;
    Ok(f)
}

fn one_line(e: &impl std::fmt::Display) -> String {
    e.to_string().trim().replace('\n', " ")
}

/// A dict as a TOML table; keys whose value is `None` are left out (the default applies).
fn table(d: &Bound<'_, PyDict>, at: &str) -> PyResult<Table> {
    let mut t = Table::new();
    for (k, v) in d.iter() {
        let k: String = k.extract().map_err(|_| {
            ConfigError::new_err(format!("{at}a setting's name must be a string, not {k}"))
        })?;
        if v.is_none() {
            continue;
        }
        let path = format!("{at}{k}");
        t.insert(k, value(&v, &path)?);
    }
    Ok(t)
}

/// A Python value as a TOML value: str (and `os.PathLike`), bool, int, float, list or tuple,
/// dict.
fn value(v: &Bound<'_, PyAny>, at: &str) -> PyResult<Value> {
    if v.is_instance_of::<PyBool>() {
        return Ok(Value::Boolean(v.extract()?));
    }
    if v.is_instance_of::<PyInt>() {
        let i: i64 = v
            .extract()
            .map_err(|_| ConfigError::new_err(format!("`{at}`: {v} is out of range")))?;
        return Ok(Value::Integer(i));
    }
    if v.is_instance_of::<PyFloat>() {
        return Ok(Value::Float(v.extract()?));
    }
    if v.is_instance_of::<PyString>() {
        return Ok(Value::String(v.extract()?));
    }
    if v.is_instance_of::<PyList>() || v.is_instance_of::<PyTuple>() {
        let mut a = Vec::new();
        for (i, item) in v.try_iter()?.enumerate() {
            a.push(value(&item?, &format!("{at}[{i}]"))?);
        }
        return Ok(Value::Array(a));
    }
    if let Ok(d) = v.cast::<PyDict>() {
        return Ok(Value::Table(table(d, &format!("{at}."))?));
    }
    if let Ok(p) = v.py().import("os")?.call_method1("fspath", (v,)) {
        if let Ok(s) = p.extract::<String>() {
            return Ok(Value::String(s));
        }
    }
    let ty = v.get_type().name()?;
    Err(ConfigError::new_err(format!(
        "`{at}`: a value of type {ty} is not a setting (str, path, bool, int, float, list or dict)"
    )))
}
