//! What a processor's query may name: the team's readable streams as tables, DataFusion's
//! scalar, aggregate and window functions, and Keystone's group windows.

use crate::schema::stream_table;
use datafusion_common::arrow::datatypes::DataType;
use datafusion_common::config::ConfigOptions;
use datafusion_common::{plan_err, Result, TableReference};
use datafusion_expr::logical_plan::builder::LogicalTableSource;
use datafusion_expr::planner::{ContextProvider, ExprPlanner};
use datafusion_expr::{AggregateUDF, HigherOrderUDF, ScalarUDF, TableSource, WindowUDF};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// Functions a processor may not call. Some make a value as large as an argument asks
/// (`repeat(s, 1000000000)` per event would take the whole server's memory, and other teams'
/// jobs with it); the others give another answer when the same events are replayed after a
/// crash, which would break "identical to an uninterrupted run".
const DENIED: [&str; 11] = [
    "repeat",
    "lpad",
    "rpad",
    "array_repeat",
    "range",
    "generate_series",
    "random",
    "uuid",
    "now",
    "current_date",
    "current_time",
];

/// The functions a query may call: built once per process (DataFusion's defaults are a few
/// hundred objects).
pub(crate) struct Functions {
    scalars: HashMap<String, Arc<ScalarUDF>>,
    aggregates: HashMap<String, Arc<AggregateUDF>>,
    windows: HashMap<String, Arc<WindowUDF>>,
    planners: Vec<Arc<dyn ExprPlanner>>,
    pub(crate) options: ConfigOptions,
}

impl Functions {
    pub(crate) fn get() -> &'static Functions {
        static FUNCTIONS: std::sync::OnceLock<Functions> = std::sync::OnceLock::new();
        FUNCTIONS.get_or_init(Functions::new)
    }

    fn new() -> Functions {
        let mut scalars = HashMap::new();
        let udfs = datafusion_functions::all_default_functions()
            .into_iter()
            .chain(datafusion_functions_nested::all_default_nested_functions())
            .chain(crate::windows::udfs().into_iter().map(Arc::new));
        for f in udfs.filter(|f| !DENIED.contains(&f.name())) {
            for name in std::iter::once(f.name()).chain(f.aliases().iter().map(String::as_str)) {
                scalars.insert(name.to_ascii_lowercase(), f.clone());
            }
        }
        let mut aggregates = HashMap::new();
        for f in datafusion_functions_aggregate::all_default_aggregate_functions() {
            for name in std::iter::once(f.name()).chain(f.aliases().iter().map(String::as_str)) {
                aggregates.insert(name.to_ascii_lowercase(), f.clone());
            }
        }
        let mut windows = HashMap::new();
        for f in datafusion_functions_window::all_default_window_functions() {
            for name in std::iter::once(f.name()).chain(f.aliases().iter().map(String::as_str)) {
                windows.insert(name.to_ascii_lowercase(), f.clone());
            }
        }
        // The same expression planners DataFusion's own session registers: struct and field
        // access (`device.os`), arrays, dates, `count(*)`, OVER clauses.
        let planners: Vec<Arc<dyn ExprPlanner>> = vec![
            Arc::new(datafusion_functions::core::planner::CoreFunctionPlanner::default()),
            Arc::new(datafusion_functions_nested::planner::NestedFunctionPlanner),
            Arc::new(datafusion_functions_nested::planner::FieldAccessPlanner),
            Arc::new(datafusion_functions::datetime::planner::DatetimeFunctionPlanner),
            Arc::new(datafusion_functions::unicode::planner::UnicodeFunctionPlanner),
            Arc::new(datafusion_functions_aggregate::planner::AggregateFunctionPlanner),
            Arc::new(datafusion_functions_window::planner::WindowFunctionPlanner),
        ];
        Functions { scalars, aggregates, windows, planners, options: ConfigOptions::default() }
    }
}

/// The tables of one query: stream name to JSON Schema (`None`: the stream has none).
pub(crate) struct Catalog<'a> {
    streams: &'a BTreeMap<String, Option<Value>>,
    functions: &'static Functions,
}

impl<'a> Catalog<'a> {
    pub(crate) fn new(streams: &'a BTreeMap<String, Option<Value>>) -> Self {
        Catalog { streams, functions: Functions::get() }
    }
}

impl ContextProvider for Catalog<'_> {
    fn get_table_source(&self, name: TableReference) -> Result<Arc<dyn TableSource>> {
        if name.schema().is_some() {
            return plan_err!("{name}: name a stream of the team, without a schema or catalog");
        }
        let table = name.table();
        match self.streams.get(table) {
            Some(schema) => Ok(Arc::new(LogicalTableSource::new(Arc::new(stream_table(schema.as_ref()))))),
            None => {
                let known: Vec<&str> = self.streams.keys().map(String::as_str).collect();
                plan_err!("no stream named {table:?} that this team can read (readable: {})", known.join(", "))
            }
        }
    }

    fn get_expr_planners(&self) -> &[Arc<dyn ExprPlanner>] {
        &self.functions.planners
    }

    fn get_function_meta(&self, name: &str) -> Option<Arc<ScalarUDF>> {
        self.functions.scalars.get(&name.to_ascii_lowercase()).cloned()
    }

    fn get_higher_order_meta(&self, _name: &str) -> Option<Arc<HigherOrderUDF>> {
        None
    }

    fn get_aggregate_meta(&self, name: &str) -> Option<Arc<AggregateUDF>> {
        self.functions.aggregates.get(&name.to_ascii_lowercase()).cloned()
    }

    fn get_window_meta(&self, name: &str) -> Option<Arc<WindowUDF>> {
        self.functions.windows.get(&name.to_ascii_lowercase()).cloned()
    }

    fn get_variable_type(&self, _variable_names: &[String]) -> Option<DataType> {
        None
    }

    fn options(&self) -> &ConfigOptions {
        &self.functions.options
    }

    fn udf_names(&self) -> Vec<String> {
        self.functions.scalars.keys().cloned().collect()
    }

    fn higher_order_function_names(&self) -> Vec<String> {
        Vec::new()
    }

    fn udaf_names(&self) -> Vec<String> {
        self.functions.aggregates.keys().cloned().collect()
    }

    fn udwf_names(&self) -> Vec<String> {
        self.functions.windows.keys().cloned().collect()
    }
}
