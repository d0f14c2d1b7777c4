//! The example extension data type, after Nautobot's example app: `example_app.textfile` ("text files") loads
//! `text_files/*.txt` as records keyed by file name. It shows what an extension needs: one [`DataType`] impl,
//! registered in the [`super::Registry`].

use serde_json::json;

use super::{DataType, ExtensionRecord, LoadInput, Loaded, Log, data_files, read_text};

pub(super) struct TextFiles;

impl DataType for TextFiles {
    fn identifier(&self) -> &'static str {
        "example_app.textfile"
    }
    fn name(&self) -> &'static str {
        "text files"
    }
    fn folder(&self) -> &'static str {
        "text_files"
    }

    fn load(&self, input: &LoadInput<'_>, out: &mut Loaded) {
        let dir = self.folder();
        let mut log = Log { out: &mut out.logs, grouping: "text files" };
        let mut records = Vec::new();
        if input.tree.is_dir(dir) {
            for (file, _) in data_files(input.tree, dir, &mut log, false) {
                if !file.ends_with(".txt") {
                    continue;
                }
                match read_text(input, &format!("{dir}/{file}")) {
                    Ok(text) => records.push(ExtensionRecord { key: file, data: json!({ "content": text }) }),
                    Err(e) => log.error(format!("Error in loading text file `{file}`: {e}")),
                }
            }
        }
        log.info("Refreshed text files");
        out.extensions.insert(self.identifier().to_owned(), records);
    }
}
