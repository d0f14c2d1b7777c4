//! Saved GraphQL queries (spec c.4): `graphql_queries/<file>`.

use serde::Serialize;
use serde_json::{Map, Value};

use super::{DataType, LoadInput, Loaded, Log, data_files, read_text};
use crate::graphql::parse_query;

pub const GROUPING: &str = "graphql queries";

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GraphqlQuery {
    /// The file name without a trailing `.gql` (`q.graphql` keeps its name).
    pub name: String,
    pub query: String,
    #[serde(skip)]
    pub variables: Map<String, Value>,
    #[serde(skip)]
    pub file: String,
}

pub(super) struct GraphqlQueries;

impl DataType for GraphqlQueries {
    fn identifier(&self) -> &'static str {
        "extras.graphqlquery"
    }
    fn name(&self) -> &'static str {
        "graphql queries"
    }
    fn weight(&self) -> u32 {
        400
    }
    fn folder(&self) -> &'static str {
        "graphql_queries"
    }
    fn records(&self) -> super::Records {
        super::Records::GraphqlQueries
    }

    fn load(&self, input: &LoadInput<'_>, out: &mut Loaded) {
        let dir = "graphql_queries";
        let mut log = Log { out: &mut out.logs, grouping: GROUPING };
        if !input.tree.is_dir(dir) {
            return;
        }
        for (file, _) in data_files(input.tree, dir, &mut log, false) {
            let name = file.strip_suffix(".gql").unwrap_or(&file).to_owned();
            let parsed = read_text(input, &format!("{dir}/{file}"))
                .map(|text| text.trim().to_owned())
                .and_then(|query| parse_query(&query).map(|vars| (query, vars)).map_err(|e| e.to_string()));
            match parsed {
                Ok((query, variables)) => {
                    out.graphql_queries.push(GraphqlQuery { name, query, variables, file });
                }
                Err(e) => log.error(format!("Error processing GraphQL query file '{file}': {e}")),
            }
        }
        super::dedupe_keep_last(&mut out.graphql_queries, |q| q.name.clone());
    }
}
