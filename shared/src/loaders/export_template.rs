//! Export templates (spec d): `export_templates/<app_label>/<model>/<file>`.

use std::collections::HashSet;
use std::sync::OnceLock;

use serde::Serialize;

use super::{DataType, LoadInput, Loaded, Log, data_files, read_text};
use crate::tree::EntryKind;

pub const GROUPING: &str = "export templates";

/// App labels whose folders at the repository root are probably misplaced templates.
const APP_LABELS: &[&str] = &["circuits", "dcim", "extras", "ipam", "tenancy", "users", "virtualization"];

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExportTemplate {
    /// `app_label.model`, e.g. `dcim.device`.
    pub content_type: String,
    /// The file name, extension included.
    pub name: String,
    pub mime_type: String,
    pub file_extension: String,
    pub template_code: String,
}

pub(super) struct ExportTemplates;

fn known_content_types() -> &'static HashSet<&'static str> {
    static TYPES: OnceLock<HashSet<&'static str>> = OnceLock::new();
    TYPES.get_or_init(|| {
        include_str!("content_types.txt").lines().filter(|l| !l.is_empty() && !l.starts_with('#')).collect()
    })
}

impl DataType for ExportTemplates {
    fn identifier(&self) -> &'static str {
        "extras.exporttemplate"
    }
    fn name(&self) -> &'static str {
        "export templates"
    }
    fn weight(&self) -> u32 {
        400
    }
    fn folder(&self) -> &'static str {
        "export_templates"
    }
    fn root_paths(&self) -> &'static [&'static str] {
        APP_LABELS
    }
    fn records(&self) -> super::Records {
        super::Records::ExportTemplates
    }

    fn load(&self, input: &LoadInput<'_>, out: &mut Loaded) {
        let mut log = Log { out: &mut out.logs, grouping: GROUPING };
        for app in APP_LABELS {
            if input.tree.is_dir(app) {
                log.warning(format!(
                    "Found \"{app}\" directory in the repository root. If this is meant to contain export templates, \
                     it should be moved into an `export_templates/` subdirectory."
                ));
            }
        }
        let root = "export_templates";
        for app in input.tree.list(root).into_iter().filter(|e| e.kind == EntryKind::Dir) {
            let app_dir = format!("{root}/{}", app.name);
            for model in input.tree.list(&app_dir).into_iter().filter(|e| e.kind == EntryKind::Dir) {
                let content_type = format!("{}.{}", app.name, model.name);
                if !known_content_types().contains(content_type.as_str()) {
                    log.warning(format!("Skipping `{content_type}` as it isn't a known content type"));
                    continue;
                }
                let model_dir = format!("{app_dir}/{}", model.name);
                for (file, kind) in data_files(input.tree, &model_dir, &mut log, true) {
                    log.info(format!("Loading `{content_type}` export template from `{file}`"));
                    let code = if kind == EntryKind::Dir {
                        Err(format!("`{content_type}/{file}` is a directory, not a template file"))
                    } else {
                        read_text(input, &format!("{model_dir}/{file}")).map(std::borrow::Cow::into_owned)
                    };
                    match code {
                        Ok(template_code) => out.export_templates.push(ExportTemplate {
                            content_type: content_type.clone(),
                            mime_type: mime_type(&file),
                            file_extension: file_extension(&file).to_owned(),
                            name: file,
                            template_code,
                        }),
                        // Nautobot logs the bare exception text here (spec h.9); we say which file failed.
                        Err(e) => log.error(format!("Error in loading export template `{content_type}/{file}`: {e}")),
                    }
                }
            }
        }
    }
}

/// The text after the last dot; a name without a dot is its own extension (spec d, quirk kept for parity).
pub fn file_extension(name: &str) -> &str {
    name.rsplit_once('.').map_or(name, |(_, ext)| ext)
}

/// The MIME type Python's `mimetypes.guess_type` gives on the target deployment (CPython 3.11, Debian
/// mime.types), or `text/plain`. `mime_guess` supplies the table; the entries where Python differs are fixed here.
pub fn mime_type(name: &str) -> String {
    let lower = name.to_ascii_lowercase();
    // Compression suffixes are encodings to Python: the type is that of what is inside.
    let inner = [".gz", ".bz2", ".xz", ".z", ".br"].iter().find_map(|enc| lower.strip_suffix(enc)).unwrap_or(&lower);
    let Some((_, ext)) = inner.rsplit_once('.') else { return "text/plain".to_owned() };
    let fixed = match ext {
        "yaml" | "yml" | "j2" | "jinja" | "jinja2" | "toml" => Some("text/plain"),
        "xml" => Some("application/xml"),
        "md" | "markdown" => Some("text/markdown"),
        "tar" => Some("application/x-tar"),
        "sh" => Some("text/x-sh"),
        "cfg" | "conf" | "ini" | "log" => Some("text/plain"),
        "py" => Some("text/x-python"),
        "csv" => Some("text/csv"),
        "json" => Some("application/json"),
        "js" => Some("text/javascript"),
        _ => None,
    };
    if let Some(fixed) = fixed {
        return fixed.to_owned();
    }
    mime_guess::from_ext(ext).first().map_or_else(|| "text/plain".to_owned(), |m| m.essence_str().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mime_types_match_python_on_debian() {
        for (name, mime) in [
            ("template.j2", "text/plain"),
            ("template2.html", "text/html"),
            ("README", "text/plain"),
            ("a.json", "application/json"),
            ("a.csv", "text/csv"),
            ("a.xml", "application/xml"),
            ("a.md", "text/markdown"),
            ("a.yaml", "text/plain"),
            ("a.tar.gz", "application/x-tar"),
            ("a.txt", "text/plain"),
            ("a.cfg", "text/plain"),
        ] {
            assert_eq!(mime_type(name), mime, "{name}");
        }
    }

    #[test]
    fn extensions() {
        for (name, ext) in [("template.j2", "j2"), ("a.tar.gz", "gz"), ("README", "README"), (".hidden", "hidden")] {
            assert_eq!(file_extension(name), ext);
        }
    }
}
