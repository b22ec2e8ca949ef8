//! Secrets: `secret` (literal or `${VAR}`), `secret_file` (read once, with
//! its mode), decoding `whsec_` + base64, and the warnings for secrets that
//! others than the owner and group `cdrhook` can read. What counts as secret is `crate::redact`'s rule.

use super::*;

pub(super) struct SecretValue {
    pub(super) secret: Secret,
    /// Written in the file itself rather than taken from `${VAR}`.
    pub(super) literal: bool,
}
text_newtype!(SecretValue, "a secret such as \"whsec_...\"", |s| {
    let expanded = expand_in_context(s)?;
    decode_secret(&expanded.text).map(|secret| SecretValue {
        secret,
        literal: !expanded.used_var(),
    })
});

pub(super) struct SecretFile(pub(super) Secret);
text_newtype!(SecretFile, "the path of a file holding a secret", |s| {
    let Expanded { text, .. } = expand_in_context(s)?;
    if text.is_empty() {
        return Err("the path is empty".into());
    }
    let path = resolve(&with_context(|ctx| ctx.base.clone()), Path::new(&text));
    let (contents, access) = read_with_access(&path)
        .map_err(|e| format!("cannot read secret file {}: {e}", path.display()))?;
    let secret = decode_secret(contents.trim_end())
        .map(SecretFile)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if let Some(loose) = access.and_then(|a| a.loose(trusted_gid(), &path)) {
        let warning = format!("secret file {} {loose}", path.display());
        with_context(|ctx| ctx.warnings.push(warning));
    }
    Ok(secret)
});

/// A file's text, and the mode and group of the very file read.
pub(super) fn read_with_access(path: &Path) -> std::io::Result<(String, Option<FileAccess>)> {
    use std::io::Read as _;
    let mut file = std::fs::File::open(path)?;
    let access = file.metadata().ok().map(|m| FileAccess::of(&m));
    let mut text = String::new();
    file.read_to_string(&mut text)?;
    Ok((text, access))
}

pub(super) fn decode_secret(text: &str) -> Result<Secret, String> {
    let encoded = text.strip_prefix("whsec_").unwrap_or(text);
    match SECRET_BASE64.decode(encoded) {
        Ok(key) if !key.is_empty() => Ok(Secret { key }),
        Ok(_) => Err("the secret is empty".into()),
        Err(_) => Err(
            "the secret is not valid: expected \"whsec_\" (optional) followed by standard base64"
                .into(),
        ),
    }
}

pub(super) fn config_file_warning(
    path: &Path,
    access: Option<FileAccess>,
    secrets: &[String],
) -> Option<String> {
    let first = secrets.first()?;
    let loose = access?.loose(trusted_gid(), path)?;
    let more = match secrets.len() {
        1 => String::new(),
        n => format!(" and {} more", n - 1),
    };
    Some(format!(
        "{} holds a secret ({first}{more}) and {loose}, or move the secret to secret_file or ${{VAR}}",
        path.display(),
    ))
}

/// `http.token_file`: the listener's bearer token, read once at load and
/// trimmed; warned about like a `secret_file` when others may read it.
pub(super) struct TokenFile {
    pub(super) path: PathBuf,
    pub(super) token: Sensitive,
}
text_newtype!(
    TokenFile,
    "the path of a file holding the HTTP bearer token",
    |s| {
        let Expanded { text, .. } = expand_in_context(s)?;
        if text.is_empty() {
            return Err("the path is empty".into());
        }
        let path = resolve(&with_context(|ctx| ctx.base.clone()), Path::new(&text));
        let (contents, access) = read_with_access(&path)
            .map_err(|e| format!("cannot read http.token_file {}: {e}", path.display()))?;
        let token = contents.trim();
        if token.is_empty() {
            return Err(format!("http.token_file {} is empty", path.display()));
        }
        if token.chars().any(|c| c.is_control() || c == ' ') {
            return Err(format!(
            "http.token_file {}: the token must be one line without spaces (it is sent in an Authorization header)",
            path.display()
        ));
        }
        if let Some(loose) = access.and_then(|a| a.loose(trusted_gid(), &path)) {
            let warning = format!("http.token_file {} {loose}", path.display());
            with_context(|ctx| ctx.warnings.push(warning));
        }
        Ok(TokenFile {
            token: Sensitive::secret(token, MASK),
            path,
        })
    }
);
