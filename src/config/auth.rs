//! A subscription's authentication keys (contract §10): `auth` (OAuth2
//! client credentials) and `tls` (a client certificate and its key), read
//! and checked where their position is known, so a mistake is refused with
//! its line and column and the file it names.
//!
//! - `auth.client_secret` is a secret like `secret` (literal, or `${VAR}`);
//!   `auth.client_secret_file` is read once, trimmed, and warned about when
//!   others may read it. Exactly one of the two. `token_url` is checked and
//!   expanded like an endpoint; `client_id` may use `${VAR}`; `scope` and
//!   `audience` are sent as written.
//! - `tls.client_cert` and `tls.client_key` are PEM files, read at load:
//!   a file that cannot be read, holds no certificate (or no key), or a key
//!   that does not belong to the certificate refuses the version, naming
//!   the file. A key file others may read is a warning, like a
//!   `secret_file`. Paths are resolved against the config's directory.

use std::sync::Arc;

use ureq::tls::{Certificate, ClientCert, PemItem, PrivateKey};

use super::*;

/// `auth` of type `oauth2_client_credentials`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuth2 {
    /// Shown as written in the file when a `${VAR}` went into it.
    pub token_url: Sensitive,
    pub client_id: String,
    /// Shown as `***` everywhere; `expose()` is for the token request alone.
    pub client_secret: Sensitive,
    pub scope: Option<String>,
    pub audience: Option<String>,
}

impl OAuth2 {
    /// For `check-config --json`: the keys as the file gives them, the
    /// client secret masked and a `${VAR}` token URL as written.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "type": "oauth2_client_credentials",
            "token_url": self.token_url.shown(),
            "client_id": self.client_id,
            "client_secret": self.client_secret.shown(),
            "scope": self.scope,
            "audience": self.audience,
        })
    }
}

/// For `check-config`: one line, the client secret masked; `scope` and
/// `audience` only when given.
impl fmt::Display for OAuth2 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "oauth2_client_credentials from {}, client_id {:?}, client_secret {}",
            self.token_url.shown(),
            self.client_id,
            self.client_secret.shown()
        )?;
        if let Some(scope) = &self.scope {
            write!(f, ", scope {scope:?}")?;
        }
        if let Some(audience) = &self.audience {
            write!(f, ", audience {audience:?}")?;
        }
        Ok(())
    }
}

/// `tls`: the client certificate (chain) and its key, read at load.
#[derive(Clone)]
pub struct ClientTls {
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    /// What ureq presents during the handshake.
    pub identity: ClientCert,
}

impl PartialEq for ClientTls {
    /// The same files with the same contents: a renewed certificate in the
    /// same place is a change.
    fn eq(&self, other: &Self) -> bool {
        let der = |c: &ClientCert| {
            let certs: Vec<Vec<u8>> = c.certs().iter().map(|c| c.der().to_vec()).collect();
            (certs, c.private_key().der().to_vec())
        };
        self.client_cert == other.client_cert
            && self.client_key == other.client_key
            && der(&self.identity) == der(&other.identity)
    }
}

impl ClientTls {
    /// For `check-config --json`: the two paths (never the key itself).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "client_cert": self.client_cert.display().to_string(),
            "client_key": self.client_key.display().to_string(),
        })
    }
}

/// For `check-config`: the two paths.
impl fmt::Display for ClientTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "client_cert {}, client_key {}",
            self.client_cert.display(),
            self.client_key.display()
        )
    }
}

// Never print the key.
impl fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientTls")
            .field("client_cert", &self.client_cert)
            .field("client_key", &self.client_key)
            .finish_non_exhaustive()
    }
}

/// `auth`, checked: the cross-field rules are raised from inside
/// `visit_map`, so they carry the mapping's position.
pub(super) struct AuthEntry {
    pub(super) oauth2: Arc<OAuth2>,
    /// The client secret was written in the file itself.
    pub(super) literal_secret: bool,
    /// `${VAR}` values that went into the token URL, to scrub on their own.
    pub(super) url_values: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "an auth mapping")]
struct RawAuth {
    #[serde(rename = "type")]
    kind: AuthType,
    token_url: Endpoint,
    client_id: AuthText,
    client_secret: Option<ClientSecret>,
    client_secret_file: Option<ClientSecretFile>,
    scope: Option<AuthText>,
    audience: Option<AuthText>,
}

#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum AuthType {
    Oauth2ClientCredentials,
}

impl<'de> Deserialize<'de> for AuthEntry {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct AuthVisitor;

        impl<'de> Visitor<'de> for AuthVisitor {
            type Value = AuthEntry;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "an auth mapping (type: oauth2_client_credentials, token_url, client_id, \
                     client_secret or client_secret_file)",
                )
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<AuthEntry, A::Error> {
                let raw = RawAuth::deserialize(de::value::MapAccessDeserializer::new(map))?;
                let AuthType::Oauth2ClientCredentials = raw.kind;
                let (client_secret, literal_secret) =
                    match (raw.client_secret, raw.client_secret_file) {
                        (Some(_), Some(_)) => {
                            return Err(de::Error::custom(
                                "auth: give either client_secret or client_secret_file, not both",
                            ))
                        }
                        (None, None) => {
                            return Err(de::Error::custom(
                                "auth: give client_secret or client_secret_file",
                            ))
                        }
                        (Some(ClientSecret { value, literal }), None) => (value, literal),
                        (None, Some(ClientSecretFile(value))) => (value, false),
                    };
                Ok(AuthEntry {
                    oauth2: Arc::new(OAuth2 {
                        token_url: raw.token_url.url,
                        client_id: raw.client_id.0,
                        client_secret: Sensitive::secret(client_secret, MASK),
                        scope: raw.scope.map(|s| s.0),
                        audience: raw.audience.map(|s| s.0),
                    }),
                    literal_secret,
                    url_values: raw.token_url.values,
                })
            }
        }

        d.deserialize_map(AuthVisitor)
    }
}

/// The checks of `auth` and `tls` against the rest of their subscription,
/// and what they add to it: the client secret (and a `${VAR}` token URL)
/// to its redactor, a literal client secret to the file's secrets, and
/// warnings for a certificate that would never be presented, or a client
/// secret or an access token that would travel unencrypted. Raised from
/// inside the subscription's `visit_map`, so a refusal carries its
/// position.
pub(super) fn check_subscription(
    name: &str,
    auth: Option<AuthEntry>,
    tls: Option<&TlsEntry>,
    endpoint: &Sensitive,
    headers: &[Header],
    redactor: &mut Redactor,
    in_file: &mut Vec<String>,
) -> Result<Option<Arc<OAuth2>>, String> {
    if tls.is_some() && !is_https(endpoint.expose()) {
        let warning = format!(
            "subscriptions[{name}].tls: the endpoint is not https, so the client certificate is never presented"
        );
        with_context(|ctx| ctx.warnings.push(warning));
    }
    let Some(a) = auth else {
        return Ok(None);
    };
    if let Some(h) = headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("authorization"))
    {
        return Err(format!(
            "header {:?} and auth both set Authorization; remove the header",
            h.name
        ));
    }
    redactor.add(a.oauth2.client_secret.expose(), MASK);
    if a.oauth2.token_url.is_secret() {
        redactor.add(a.oauth2.token_url.expose(), a.oauth2.token_url.shown());
        for value in &a.url_values {
            redactor.add(value, MASK);
        }
    }
    if a.literal_secret {
        in_file.push(format!("subscriptions[{name}].auth.client_secret"));
    }
    let url = a.oauth2.token_url.expose();
    if !is_https(url) && !is_loopback(url) {
        let warning = format!(
            "subscriptions[{name}].auth.token_url {} is not https: the client secret and the token travel unencrypted",
            a.oauth2.token_url.shown()
        );
        with_context(|ctx| ctx.warnings.push(warning));
    }
    let endpoint_url = endpoint.expose();
    if !is_https(endpoint_url) && !is_loopback(endpoint_url) {
        let warning = format!(
            "subscriptions[{name}].auth: the endpoint {} is not https: the access token travels unencrypted",
            endpoint.shown()
        );
        with_context(|ctx| ctx.warnings.push(warning));
    }
    Ok(Some(a.oauth2))
}

fn is_https(url: &str) -> bool {
    url.get(..8)
        .is_some_and(|s| s.eq_ignore_ascii_case("https://"))
}

/// An http URL to this machine (127.0.0.0/8, `localhost`, `[::1]`): a
/// token endpoint on the box itself needs no TLS.
fn is_loopback(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => authority.split(':').next().unwrap_or(""),
    };
    host.eq_ignore_ascii_case("localhost")
        || host == "::1"
        || host
            .parse::<std::net::Ipv4Addr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Checks a value that goes into the token request's form: not empty, no
/// control characters. The value is never echoed (it may be a secret).
fn check_form_value(text: &str, used_var: bool) -> Result<(), String> {
    let after = if used_var {
        " (after expanding variables)"
    } else {
        ""
    };
    if text.is_empty() {
        return Err(format!("the value is empty{after}"));
    }
    if text.chars().any(char::is_control) {
        return Err(format!("the value contains a control character{after}"));
    }
    Ok(())
}

/// `client_id`, `scope`, `audience`: text, `${VAR}` expanded.
struct AuthText(String);
text_newtype!(AuthText, "text", |s| {
    let expanded = expand_in_context(s)?;
    check_form_value(&expanded.text, expanded.used_var())?;
    Ok(AuthText(expanded.text))
});

struct ClientSecret {
    value: String,
    literal: bool,
}
text_newtype!(
    ClientSecret,
    "a client secret (write \"${VAR}\" to take it from the environment)",
    |s| {
        let expanded = expand_in_context(s)?;
        check_form_value(&expanded.text, expanded.used_var())?;
        Ok(ClientSecret {
            literal: !expanded.used_var(),
            value: expanded.text,
        })
    }
);

struct ClientSecretFile(String);
text_newtype!(
    ClientSecretFile,
    "the path of a file holding the client secret",
    |s| {
        let Expanded { text, .. } = expand_in_context(s)?;
        if text.is_empty() {
            return Err("the path is empty".into());
        }
        let path = resolve(&with_context(|ctx| ctx.base.clone()), Path::new(&text));
        let (contents, access) = read_with_access(&path)
            .map_err(|e| format!("cannot read client secret file {}: {e}", path.display()))?;
        let secret = contents.trim();
        check_form_value(secret, false).map_err(|e| format!("{}: {e}", path.display()))?;
        warn_if_loose(access, &path, "client secret file");
        Ok(ClientSecretFile(secret.to_owned()))
    }
);

fn warn_if_loose(access: Option<FileAccess>, path: &Path, what: &str) {
    if let Some(loose) = access.and_then(|a| a.loose(trusted_gid(), path)) {
        let warning = format!("{what} {} {loose}", path.display());
        with_context(|ctx| ctx.warnings.push(warning));
    }
}

/// `tls`, checked: the key must belong to the certificate (raised from
/// inside `visit_map`, at the mapping's position).
pub(super) struct TlsEntry(pub(super) ClientTls);

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a tls mapping")]
struct RawTls {
    client_cert: CertFile,
    client_key: KeyFile,
}

impl<'de> Deserialize<'de> for TlsEntry {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct TlsVisitor;

        impl<'de> Visitor<'de> for TlsVisitor {
            type Value = TlsEntry;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a tls mapping (client_cert and client_key, PEM files)")
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<TlsEntry, A::Error> {
                let RawTls {
                    client_cert,
                    client_key,
                } = RawTls::deserialize(de::value::MapAccessDeserializer::new(map))?;
                keys_match(&client_cert.certs, &client_key.key).map_err(|problem| {
                    de::Error::custom(format!(
                        "tls.client_key {} {problem} tls.client_cert {}",
                        client_key.path.display(),
                        client_cert.path.display()
                    ))
                })?;
                Ok(TlsEntry(ClientTls {
                    identity: ClientCert::new_with_certs(&client_cert.certs, client_key.key),
                    client_cert: client_cert.path,
                    client_key: client_key.path,
                }))
            }
        }

        d.deserialize_map(TlsVisitor)
    }
}

struct CertFile {
    path: PathBuf,
    certs: Vec<Certificate<'static>>,
}
text_newtype!(CertFile, "the path of a PEM certificate file", |s| {
    let path = conf_file(s)?;
    let pem = std::fs::read(&path)
        .map_err(|e| format!("tls.client_cert {}: cannot read it: {e}", path.display()))?;
    let mut certs = Vec::new();
    for item in ureq::tls::parse_pem(&pem) {
        match item {
            Ok(PemItem::Certificate(c)) => certs.push(c.to_owned()),
            Ok(_) => {}
            Err(e) => return Err(format!("tls.client_cert {}: {e}", path.display())),
        }
    }
    if certs.is_empty() {
        return Err(format!(
            "tls.client_cert {}: no PEM certificate (BEGIN CERTIFICATE) in it",
            path.display()
        ));
    }
    Ok(CertFile { path, certs })
});

struct KeyFile {
    path: PathBuf,
    key: PrivateKey<'static>,
}
text_newtype!(KeyFile, "the path of a PEM private key file", |s| {
    let path = conf_file(s)?;
    let (pem, access) = read_with_access(&path).map_err(|e| match e.kind() {
        // Not text: what a Windows-side export often is.
        std::io::ErrorKind::InvalidData => format!(
            "tls.client_key {}: not a PEM file (a DER or PKCS#12 .pfx file? convert it to PEM \
             with openssl)",
            path.display()
        ),
        _ => format!("tls.client_key {}: cannot read it: {e}", path.display()),
    })?;
    // PKCS#8 `ENCRYPTED PRIVATE KEY`, or a legacy key with `Proc-Type:
    // 4,ENCRYPTED`: the parser would skip the one and misread the other.
    if pem.contains("ENCRYPTED") {
        return Err(format!(
            "tls.client_key {}: the key is encrypted (has a passphrase); cdrhook needs it \
             unencrypted: `openssl pkey -in KEY -out PLAIN.key`, and keep that file chmod 600",
            path.display()
        ));
    }
    let mut keys = Vec::new();
    for item in ureq::tls::parse_pem(pem.as_bytes()) {
        match item {
            Ok(PemItem::PrivateKey(k)) => keys.push(k.to_owned()),
            Ok(_) => {}
            // The parser's message never holds key material.
            Err(e) => return Err(format!("tls.client_key {}: {e}", path.display())),
        }
    }
    let key = match keys.len() {
        1 => keys.remove(0),
        0 => {
            return Err(format!(
                "tls.client_key {}: no PEM private key (BEGIN PRIVATE KEY, BEGIN RSA PRIVATE KEY \
                 or BEGIN EC PRIVATE KEY) in it",
                path.display()
            ))
        }
        n => {
            return Err(format!(
                "tls.client_key {}: {n} private keys in it; keep only the certificate's",
                path.display()
            ))
        }
    };
    warn_if_loose(access, &path, "tls.client_key");
    Ok(KeyFile { path, key })
});

/// A file path from the config, `${VAR}` expanded and resolved against the
/// config's directory.
fn conf_file(s: &str) -> Result<PathBuf, String> {
    let Expanded { text, .. } = expand_in_context(s)?;
    if text.is_empty() {
        return Err("the path is empty".into());
    }
    Ok(resolve(
        &with_context(|ctx| ctx.base.clone()),
        Path::new(&text),
    ))
}

/// Whether `key` belongs to the first (end-entity) certificate: rustls
/// compares the public key the private key gives with the certificate's.
fn keys_match(certs: &[Certificate<'static>], key: &PrivateKey<'static>) -> Result<(), String> {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let key_der = PrivateKeyDer::try_from(key.der())
        .map_err(|e| format!("cannot be read ({e}) to check it against"))?
        .clone_key();
    let provider = rustls::crypto::ring::default_provider();
    let signing = provider
        .key_provider
        .load_private_key(key_der)
        .map_err(|e| format!("cannot be used ({e}) with"))?;
    let chain = certs
        .iter()
        .map(|c| CertificateDer::from(c.der().to_vec()))
        .collect();
    match rustls::sign::CertifiedKey::new(chain, signing).keys_match() {
        Ok(()) => Ok(()),
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {
            // ring cannot derive this key's public half: the handshake will
            // tell instead.
            Ok(())
        }
        Err(rustls::Error::InconsistentKeys(_)) => {
            Err("does not belong to the certificate in".into())
        }
        Err(e) => Err(format!("cannot be checked against ({e})")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_in(dir: &Path, text: &str, vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let env = |name: &str| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        };
        parse(text, &dir.join("config.yaml"), &env)
    }

    /// The text is refused at `line`:`column`; returns the message.
    #[track_caller]
    fn refused(dir: &Path, text: &str, line: usize, column: usize) -> String {
        match parse_in(dir, text, &[]) {
            Err(ConfigError::Invalid {
                line: l,
                column: c,
                message,
                ..
            }) => {
                assert_eq!((l, c), (line, column), "{message}");
                message
            }
            other => panic!("expected a positioned refusal, got {other:?}"),
        }
    }

    const HEAD: &str =
        "subscriptions:\n  - name: crm\n    endpoint: https://crm.example.com/hook\n    events: [\"*\"]\n";

    fn auth(lines: &str) -> String {
        format!("{HEAD}    auth:\n{lines}")
    }

    #[test]
    fn oauth2_keys_are_read_and_the_secret_is_masked_and_scrubbed() {
        let dir = tempfile::tempdir().expect("dir");
        let text = auth(
            "      type: oauth2_client_credentials\n      token_url: https://login.example.com/${TENANT}/token\n      client_id: \"cdrhook\"\n      client_secret: \"${DYN_SECRET}\"\n      scope: \"https://crm.example.com/.default\"\n      audience: crm\n",
        );
        let c = parse_in(
            dir.path(),
            &text,
            &[("DYN_SECRET", "s3cr3t-value"), ("TENANT", "tenant-42")],
        )
        .expect("valid");
        let s = &c.subscriptions[0];
        let a = s.auth.as_ref().expect("auth");
        assert_eq!(
            a.token_url.expose(),
            "https://login.example.com/tenant-42/token"
        );
        assert_eq!(
            a.token_url.shown(),
            "https://login.example.com/${TENANT}/token"
        );
        assert_eq!(a.client_id, "cdrhook");
        assert_eq!(a.client_secret.expose(), "s3cr3t-value");
        assert_eq!(a.client_secret.shown(), MASK);
        assert_eq!(a.scope.as_deref(), Some("https://crm.example.com/.default"));
        assert_eq!(a.audience.as_deref(), Some("crm"));
        assert!(!format!("{c:?}").contains("s3cr3t-value"));
        assert_eq!(
            s.redactor.scrub("echo s3cr3t-value for tenant-42"),
            "echo *** for ***"
        );
        // From ${VAR}: nothing for the file-permission warning.
        assert!(c.secrets_in_file.is_empty());

        // A literal client secret is a secret written in the file.
        let text = auth("      type: oauth2_client_credentials\n      token_url: https://l/t\n      client_id: a\n      client_secret: literal-secret\n");
        let c = parse_in(dir.path(), &text, &[]).expect("valid");
        assert_eq!(c.secrets_in_file, ["subscriptions[crm].auth.client_secret"]);
        assert_eq!(
            c.subscriptions[0].auth.as_ref().map(|a| a.scope.clone()),
            Some(None)
        );
    }

    #[test]
    fn check_config_shows_the_keys_with_the_secret_masked() {
        let dir = tempfile::tempdir().expect("dir");
        let text = auth(
            "      type: oauth2_client_credentials\n      token_url: https://login.example.com/${TENANT}/token\n      client_id: cdrhook\n      client_secret: \"${DYN_SECRET}\"\n      scope: \"https://crm.example.com/.default\"\n",
        );
        let c = parse_in(
            dir.path(),
            &text,
            &[("DYN_SECRET", "s3cr3t-value"), ("TENANT", "tenant-42")],
        )
        .expect("valid");
        let a = c.subscriptions[0].auth.as_ref().expect("auth");
        assert_eq!(
            a.to_string(),
            "oauth2_client_credentials from https://login.example.com/${TENANT}/token, \
             client_id \"cdrhook\", client_secret ***, scope \"https://crm.example.com/.default\""
        );
        assert_eq!(
            a.to_json(),
            serde_json::json!({
                "type": "oauth2_client_credentials",
                "token_url": "https://login.example.com/${TENANT}/token",
                "client_id": "cdrhook",
                "client_secret": "***",
                "scope": "https://crm.example.com/.default",
                "audience": null,
            })
        );
        // A literal secret is masked the same way.
        let text = auth("      type: oauth2_client_credentials\n      token_url: https://l/t\n      client_id: a\n      client_secret: literal-secret\n      audience: crm\n");
        let c = parse_in(dir.path(), &text, &[]).expect("valid");
        let a = c.subscriptions[0].auth.as_ref().expect("auth");
        assert_eq!(
            a.to_string(),
            "oauth2_client_credentials from https://l/t, client_id \"a\", client_secret ***, audience \"crm\""
        );
        assert!(!a.to_json().to_string().contains("literal-secret"));
    }

    #[test]
    fn client_secret_file_is_read_trimmed_and_warned_about_when_loose() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().expect("dir");
        let file = dir.path().join("client.secret");
        std::fs::write(&file, "from-a-file\n").expect("write");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let text = auth("      type: oauth2_client_credentials\n      token_url: https://l/t\n      client_id: a\n      client_secret_file: client.secret\n");
        let c = parse_in(dir.path(), &text, &[]).expect("valid");
        let a = c.subscriptions[0].auth.as_ref().expect("auth");
        assert_eq!(a.client_secret.expose(), "from-a-file");
        assert!(
            c.warnings
                .iter()
                .any(|w| w.starts_with("client secret file")
                    && w.contains("client.secret")
                    && w.contains("every user")),
            "{:?}",
            c.warnings
        );
    }

    #[test]
    fn auth_mistakes_are_refused_with_line_and_column() {
        let dir = tempfile::tempdir().expect("dir");
        let d = dir.path();
        let base = "      type: oauth2_client_credentials\n      token_url: https://l/t\n      client_id: a\n";
        // (the auth lines, line, column, what the message says)
        let table: &[(String, usize, usize, &str)] = &[
            (
                "      type: basic\n      token_url: https://l/t\n      client_id: a\n      client_secret: x\n".into(),
                6, 13, "unknown variant `basic`",
            ),
            (base.to_string(), 6, 7, "give client_secret or client_secret_file"),
            (
                format!("{base}      client_secret: x\n      client_secret_file: /nonexistent/s\n"),
                10, 27, "cannot read client secret file /nonexistent/s",
            ),
            (
                format!("{base}      client_secret: x\n      client_secret_file: ${{NOPE}}\n"),
                10, 27, "NOPE is not set",
            ),
            (
                "      type: oauth2_client_credentials\n      token_url: ftp://l/t\n      client_id: a\n      client_secret: x\n".into(),
                7, 18, "is not an http or https URL",
            ),
            (
                "      type: oauth2_client_credentials\n      token_url: https://l/t\n      client_secret: x\n".into(),
                6, 7, "missing field `client_id`",
            ),
            (
                format!("{base}      client_secret: x\n      resource: y\n"),
                10, 7, "unknown field `resource`",
            ),
            (format!("{base}      client_secret: \"\"\n"), 9, 22, "the value is empty"),
        ];
        for (lines, line, column, says) in table {
            let message = refused(d, &auth(lines), *line, *column);
            assert!(message.contains(says), "{lines}: {message}");
        }
        // Both secrets: at the auth mapping.
        std::fs::write(d.join("s"), "x").expect("write");
        let message = refused(
            d,
            &auth(&format!(
                "{base}      client_secret: x\n      client_secret_file: s\n"
            )),
            6,
            7,
        );
        assert!(message.contains("not both"), "{message}");
    }

    #[test]
    fn an_authorization_header_beside_auth_is_refused() {
        let dir = tempfile::tempdir().expect("dir");
        let text = format!("{HEAD}    headers:\n      authorization: Bearer x\n    auth:\n      type: oauth2_client_credentials\n      token_url: https://l/t\n      client_id: a\n      client_secret: x\n");
        let message = refused(dir.path(), &text, 2, 5);
        assert!(message.contains("both set Authorization"), "{message}");
    }

    #[test]
    fn a_certificate_or_a_client_secret_that_would_travel_in_clear_is_a_warning() {
        let dir = tempfile::tempdir().expect("dir");
        let (_, _, _) = cert_files(dir.path());
        let sub = |endpoint: &str, token_url: &str| {
            format!(
                "subscriptions:\n  - name: crm\n    endpoint: {endpoint}\n    events: [\"*\"]\n    tls:\n      client_cert: client.pem\n      client_key: client.key\n    auth:\n      type: oauth2_client_credentials\n      token_url: {token_url}\n      client_id: a\n      client_secret: \"${{S}}\"\n"
            )
        };
        // (endpoint, token URL, warnings that start so)
        for (endpoint, token_url, want) in [
            ("https://crm/h", "https://login/t", vec![]),
            ("https://crm/h", "http://127.0.0.1:8080/t", vec![]),
            ("https://crm/h", "http://localhost/t", vec![]),
            ("https://crm/h", "http://[::1]:9/t", vec![]),
            (
                "https://crm/h",
                "http://login.example.com/t",
                vec!["subscriptions[crm].auth.token_url http://login.example.com/t is not https"],
            ),
            (
                "http://crm/h",
                "https://login/t",
                vec![
                    "subscriptions[crm].tls: the endpoint is not https",
                    "subscriptions[crm].auth: the endpoint http://crm/h is not https: the access token",
                ],
            ),
            (
                "http://127.0.0.1:8080/h",
                "https://login/t",
                vec!["subscriptions[crm].tls: the endpoint is not https"],
            ),
        ] {
            let c = parse_in(dir.path(), &sub(endpoint, token_url), &[("S", "secret")])
                .unwrap_or_else(|e| panic!("{e}"));
            let warnings: Vec<&String> = c
                .warnings
                .iter()
                .filter(|w| !w.contains("every user") && !w.contains("can be read"))
                .collect();
            assert_eq!(
                warnings.len(),
                want.len(),
                "{endpoint} {token_url}: {warnings:?}"
            );
            for (w, start) in warnings.iter().zip(&want) {
                assert!(w.starts_with(start), "{w}");
            }
        }
    }

    /// A certificate and its key, and another key, as PEM files in `dir`.
    fn cert_files(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(vec!["client.example".to_string()])
            .expect("params")
            .self_signed(&key)
            .expect("cert");
        let other = rcgen::KeyPair::generate().expect("key");
        let paths = (
            dir.join("client.pem"),
            dir.join("client.key"),
            dir.join("other.key"),
        );
        std::fs::write(&paths.0, cert.pem()).expect("write");
        std::fs::write(&paths.1, key.serialize_pem()).expect("write");
        std::fs::write(&paths.2, other.serialize_pem()).expect("write");
        (paths.0, paths.1, paths.2)
    }

    fn tls(cert: &str, key: &str) -> String {
        format!("{HEAD}    tls:\n      client_cert: {cert}\n      client_key: {key}\n")
    }

    #[test]
    fn a_client_certificate_and_its_key_are_read_relative_to_the_config() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().expect("dir");
        let (cert, key, _) = cert_files(dir.path());
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let c = parse_in(dir.path(), &tls("client.pem", "client.key"), &[]).expect("valid");
        let t = c.subscriptions[0].tls.as_ref().expect("tls");
        assert_eq!((&t.client_cert, &t.client_key), (&cert, &key));
        assert_eq!(t.identity.certs().len(), 1);
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
        assert!(!format!("{t:?}").contains("PRIVATE"));
        // What check-config shows: the two paths.
        assert_eq!(
            t.to_string(),
            format!(
                "client_cert {}, client_key {}",
                cert.display(),
                key.display()
            )
        );
        assert_eq!(
            t.to_json(),
            serde_json::json!({
                "client_cert": cert.display().to_string(),
                "client_key": key.display().to_string(),
            })
        );
        // Read again, the same files are the same config.
        let again = parse_in(dir.path(), &tls("client.pem", "client.key"), &[]).expect("valid");
        assert_eq!(c, again);
        // A key every user may read is a warning.
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let c = parse_in(dir.path(), &tls("client.pem", "client.key"), &[]).expect("valid");
        assert!(
            c.warnings.iter().any(|w| w.starts_with("tls.client_key")
                && w.contains("client.key")
                && w.contains("every user")),
            "{:?}",
            c.warnings
        );
    }

    #[test]
    fn a_missing_unreadable_or_mismatched_certificate_or_key_is_refused_naming_the_file() {
        let dir = tempfile::tempdir().expect("dir");
        let d = dir.path();
        let (cert, key, other) = cert_files(d);
        let shown = |p: &Path| p.display().to_string();
        // (cert, key, line, column, the message says)
        let table: Vec<(String, String, usize, usize, String)> = vec![
            (
                "missing.pem".into(),
                "client.key".into(),
                6,
                20,
                format!(
                    "tls.client_cert {}: cannot read it",
                    shown(&d.join("missing.pem"))
                ),
            ),
            (
                "client.pem".into(),
                "missing.key".into(),
                7,
                19,
                format!(
                    "tls.client_key {}: cannot read it",
                    shown(&d.join("missing.key"))
                ),
            ),
            (
                "client.key".into(),
                "client.key".into(),
                6,
                20,
                format!("tls.client_cert {}: no PEM certificate", shown(&key)),
            ),
            (
                "client.pem".into(),
                "client.pem".into(),
                7,
                19,
                format!("tls.client_key {}: no PEM private key", shown(&cert)),
            ),
            (
                "client.pem".into(),
                "other.key".into(),
                6,
                7,
                format!(
                    "tls.client_key {} does not belong to the certificate in tls.client_cert {}",
                    shown(&other),
                    shown(&cert)
                ),
            ),
        ];
        // An encrypted key, and a binary (DER or .pfx) file.
        std::fs::write(
            d.join("encrypted.key"),
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIBvTBXBgkq\n-----END ENCRYPTED PRIVATE KEY-----\n",
        )
        .expect("write");
        std::fs::write(d.join("client.pfx"), [0x30, 0x82, 0x0a, 0xff, 0xfe, 0x02]).expect("write");
        let table = table.into_iter().chain([
            (
                "client.pem".into(),
                "encrypted.key".into(),
                7,
                19,
                format!(
                    "tls.client_key {}: the key is encrypted",
                    shown(&d.join("encrypted.key"))
                ),
            ),
            (
                "client.pem".into(),
                "client.pfx".into(),
                7,
                19,
                format!(
                    "tls.client_key {}: not a PEM file",
                    shown(&d.join("client.pfx"))
                ),
            ),
        ]);
        for (c, k, line, column, says) in table {
            let message = refused(d, &tls(&c, &k), line, column);
            assert!(message.contains(&says), "{c} {k}: {message}");
        }
        // Both keys are required.
        let message = refused(
            d,
            &format!("{HEAD}    tls:\n      client_cert: client.pem\n"),
            6,
            7,
        );
        assert!(message.contains("missing field `client_key`"), "{message}");
    }
}
