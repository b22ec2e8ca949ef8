//! Validation with positions: a YAML error becomes a [`ConfigError`] with
//! the file's line and column; relative paths are resolved against the
//! config's directory; and the deserialization context that the value
//! newtypes read (variables, the base directory, names seen, warnings),
//! installed for one `parse` on this thread.

use super::*;

pub(super) fn yaml_error(path: &Path, err: &serde_yaml::Error) -> ConfigError {
    let mut message = err.to_string();
    match err.location() {
        Some(loc) => {
            // serde_yaml appends the position in prose; it is reported in the
            // `path:line:column:` prefix instead.
            let suffix = format!(" at line {} column {}", loc.line(), loc.column());
            if let Some(at) = message.find(&suffix) {
                message.replace_range(at..at + suffix.len(), "");
            }
            ConfigError::Invalid {
                path: path.to_path_buf(),
                line: loc.line(),
                column: loc.column(),
                message,
            }
        }
        None => ConfigError::Unpositioned {
            path: path.to_path_buf(),
            message,
        },
    }
}

pub(super) fn base_dir(config_path: &Path) -> PathBuf {
    let parent = config_path.parent().unwrap_or(Path::new(""));
    if parent.is_absolute() {
        return parent.to_path_buf();
    }
    // Anchor a relative config path to the cwd now, so that resolved paths do
    // not change meaning if the process later changes directory.
    match std::env::current_dir() {
        Ok(cwd) => cwd.join(parent),
        Err(_) => parent.to_path_buf(),
    }
}

pub(super) fn resolve(base: &Path, p: &Path) -> PathBuf {
    // Dropping `.` components keeps "./spool" from showing up as
    // "/etc/cdrhook/./spool" in messages and restart comparisons; `..` is kept
    // because folding it is wrong across symlinks.
    base.join(p)
        .components()
        .filter(|c| !matches!(c, Component::CurDir))
        .collect()
}

// ---------------------------------------------------------------------------
// Deserialization context
//
// serde gives `Deserialize` impls no way to receive arguments short of
// threading a `DeserializeSeed` through every level, which the derived structs
// cannot do. The few things validation needs (variable values, the config
// directory, names seen so far) are installed here for the duration of one
// `parse` call on this thread.

#[derive(Default)]
pub(super) struct Context {
    pub(super) vars: HashMap<String, Option<String>>,
    pub(super) base: PathBuf,
    pub(super) names: HashSet<String>,
    /// See [`Config::warnings`].
    pub(super) warnings: Vec<String>,
    /// See [`Config::secrets_in_file`].
    pub(super) secrets_in_file: Vec<String>,
}

thread_local! {
    static CONTEXT: RefCell<Option<Context>> = const { RefCell::new(None) };
}

pub(super) struct ContextGuard {
    pub(super) previous: Option<Context>,
}

impl ContextGuard {
    pub(super) fn install(ctx: Context) -> ContextGuard {
        let previous = CONTEXT.with(|c| c.replace(Some(ctx)));
        ContextGuard { previous }
    }
}

impl Drop for ContextGuard {
    fn drop(&mut self) {
        let previous = self.previous.take();
        CONTEXT.with(|c| *c.borrow_mut() = previous);
    }
}

/// `f` must not call `with_context` itself (the context is borrowed mutably).
pub(super) fn with_context<R>(f: impl FnOnce(&mut Context) -> R) -> R {
    CONTEXT.with(|c| match c.borrow_mut().as_mut() {
        Some(ctx) => f(ctx),
        None => f(&mut Context::default()),
    })
}

/// Deserializes any scalar as text and converts it with `convert`.
pub(super) fn deserialize_text<'de, D, T>(
    deserializer: D,
    expecting: &'static str,
    convert: fn(&str) -> Result<T, String>,
) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
{
    struct TextVisitor<T> {
        expecting: &'static str,
        convert: fn(&str) -> Result<T, String>,
    }

    impl<T> Visitor<'_> for TextVisitor<T> {
        type Value = T;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.expecting)
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
            (self.convert)(v).map_err(E::custom)
        }
    }

    deserializer.deserialize_str(TextVisitor { expecting, convert })
}

macro_rules! text_newtype {
    ($ty:ident, $expecting:expr, $convert:expr) => {
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                deserialize_text(d, $expecting, $convert)
            }
        }
    };
}
pub(super) use text_newtype;
