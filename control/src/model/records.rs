//! What the store hands back: revisions, objects, users and tokens as listed.

use super::*;

/// One stored version of one object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "store", derive(ToSchema))]
pub struct Revision {
    /// Position in the platform-wide revision log.
    pub seq: i64,
    pub object_id: String,
    pub kind: Kind,
    /// Owning team's name (the team's own name for a team).
    pub team: String,
    pub name: String,
    /// Per-object version, 1 for the create, +1 per change.
    pub version: i64,
    pub op: Op,
    pub author: String,
    pub reason: String,
    /// The object's full spec at this version (the last spec for a tombstone).
    #[cfg_attr(feature = "store", schema(value_type = Object))]
    pub spec: serde_json::Value,
    /// Milliseconds since the Unix epoch.
    pub created_at: i64,
}

/// The current goal of one object: its latest non-tombstone revision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "store", derive(ToSchema))]
pub struct Object {
    pub id: String,
    pub kind: Kind,
    pub team: String,
    pub name: String,
    pub version: i64,
    /// How many objects of this kind, team and name were deleted before this one was created. A
    /// stream's topic includes it, so a re-created stream starts empty.
    #[serde(default)]
    pub incarnation: i64,
    #[cfg_attr(feature = "store", schema(value_type = Object))]
    pub spec: serde_json::Value,
    pub updated_by: String,
    pub updated_at: i64,
}

impl Object {
    /// The log topic of a stream object (see [`stream_topic`]).
    pub fn stream_topic(&self) -> String {
        stream_topic(&self.team, &self.name, self.incarnation)
    }

    /// The spec as its typed form; a stored spec always matches its kind.
    pub fn spec_as<T: serde::de::DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_value(self.spec.clone())
    }
}

/// A user as listed to admins (never the hash).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "store", derive(ToSchema))]
pub struct UserInfo {
    pub id: String,
    pub username: String,
    pub role: Role,
    pub teams: Vec<String>,
    /// Signs in no more; sessions and tokens stopped.
    #[serde(default)]
    pub disabled: bool,
}

/// An API token as listed (never the secret).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "store", derive(ToSchema))]
pub struct TokenInfo {
    pub id: String,
    pub name: String,
    pub team: String,
    pub role: Role,
    /// The first characters, to tell tokens apart.
    pub prefix: String,
    pub created_at: i64,
    pub revoked: bool,
    /// When the token stops working, if it ever does (ms since the epoch).
    #[serde(default)]
    pub expires_at: Option<i64>,
    /// Past its expiry when listed.
    #[serde(default)]
    pub expired: bool,
}

/// A producer token as listed (never the secret).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "store", derive(ToSchema))]
pub struct ProducerTokenInfo {
    pub id: String,
    pub name: String,
    pub prefix: String,
    pub created_at: i64,
    pub revoked: bool,
}
