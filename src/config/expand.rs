//! `${VAR}` expansion: `$$` is a literal `$`, a `$` not followed by `{` is
//! kept, an unset variable refuses the file. Pure text, apart from
//! [`expand_in_context`], which reads the variables `parse` collected.

use super::*;

/// Expands `${VAR}` references; returns the text and whether any variable was
/// substituted.
pub(super) fn expand(
    text: &str,
    lookup: &mut dyn FnMut(&str) -> Option<String>,
) -> Result<(String, bool), String> {
    let mut out = String::with_capacity(text.len());
    let mut used = false;
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(tail) = after.strip_prefix('{') {
            let Some(end) = tail.find('}') else {
                return Err(
                    "\"${\" without a closing \"}\" (write \"$${\" for a literal \"${\")".into(),
                );
            };
            let name = &tail[..end];
            if !is_var_name(name) {
                return Err(format!(
                    "\"${{{name}}}\" is not a valid variable reference \
                     (a name is letters, digits and _)"
                ));
            }
            match lookup(name) {
                Some(value) => {
                    out.push_str(&value);
                    used = true;
                }
                None => return Err(format!("environment variable {name} is not set")),
            }
            rest = &tail[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok((out, used))
}

pub(super) fn is_var_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Collects every variable any string in the document references. This is a
/// superset of what the typed pass will look up, as both use `expand`.
pub(super) fn collect_var_names(value: &serde_yaml::Value, names: &mut BTreeSet<String>) {
    use serde_yaml::Value;
    match value {
        Value::String(s) => {
            // Errors are reported by the typed pass, with a position.
            let _ = expand(s, &mut |name| {
                names.insert(name.to_owned());
                Some(String::new())
            });
        }
        Value::Sequence(items) => items.iter().for_each(|v| collect_var_names(v, names)),
        Value::Mapping(map) => map.iter().for_each(|(k, v)| {
            collect_var_names(k, names);
            collect_var_names(v, names);
        }),
        Value::Tagged(tagged) => collect_var_names(&tagged.value, names),
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

/// Text after `${VAR}` expansion, with the values that went into it.
pub(super) struct Expanded {
    pub(super) text: String,
    pub(super) values: Vec<String>,
}

impl Expanded {
    pub(super) fn used_var(&self) -> bool {
        !self.values.is_empty()
    }
}

pub(super) fn expand_in_context(text: &str) -> Result<Expanded, String> {
    with_context(|ctx| {
        let mut values = Vec::new();
        let (text, _) = expand(text, &mut |name| {
            let value = ctx.vars.get(name).cloned().flatten();
            values.extend(value.clone());
            value
        })?;
        Ok(Expanded { text, values })
    })
}
