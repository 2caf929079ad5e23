//! A declaration of one object as submitted, typed by its kind: what the goal-state service
//! validates and stores.

use super::to_json;
use crate::approvals::ApprovalPolicy;
use crate::model::*;
use crate::validation::ValidationErrors;
use serde_json::Value;

/// A declaration of one object, typed by kind.
#[derive(Debug, Clone, PartialEq)]
pub enum Declaration {
    Team(TeamSpec),
    Stream(StreamSpec),
    Sink(SinkInput),
    Route(RouteSpec),
    Processor(ProcessorSpec),
    Source(SourceInput),
    Policy(ApprovalPolicy),
}

impl Declaration {
    pub fn kind(&self) -> Kind {
        match self {
            Declaration::Team(_) => Kind::Team,
            Declaration::Stream(_) => Kind::Stream,
            Declaration::Sink(_) => Kind::Sink,
            Declaration::Route(_) => Kind::Route,
            Declaration::Processor(_) => Kind::Processor,
            Declaration::Source(_) => Kind::Source,
            Declaration::Policy(_) => Kind::Policy,
        }
    }

    /// The declaration as submitted (a sink's secret values included), to apply later.
    pub fn to_json(&self) -> Value {
        match self {
            Declaration::Team(s) => to_json(s),
            Declaration::Stream(s) => to_json(s),
            Declaration::Sink(s) => to_json(s),
            Declaration::Route(s) => to_json(s),
            Declaration::Processor(s) => to_json(s),
            Declaration::Source(s) => to_json(s),
            Declaration::Policy(s) => to_json(s),
        }
    }

    /// Parses a JSON spec for `kind`, reporting the exact field path of a type error.
    pub fn from_json(kind: Kind, spec: Value) -> Result<Declaration, ValidationErrors> {
        fn parse<T: serde::de::DeserializeOwned>(v: Value) -> Result<T, ValidationErrors> {
            serde_path_to_error::deserialize(v).map_err(|e| {
                let path = e.path().to_string();
                let field = if path == "." { "spec".to_owned() } else { format!("spec.{path}") };
                ValidationErrors::single(field, e.into_inner().to_string())
            })
        }
        Ok(match kind {
            Kind::Team => Declaration::Team(parse(spec)?),
            Kind::Stream => Declaration::Stream(parse(spec)?),
            Kind::Sink => Declaration::Sink(parse(spec)?),
            Kind::Route => Declaration::Route(parse(spec)?),
            Kind::Processor => Declaration::Processor(parse(spec)?),
            Kind::Source => Declaration::Source(parse(spec)?),
            Kind::Policy => Declaration::Policy(parse(spec)?),
        })
    }
}
