//! Teams and users, for admins.

use crate::components::*;
use crate::error::AppError;
use keystone_control::{Object, UserInfo};
use leptos::prelude::*;
use leptos_meta::Title;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DirectoryData {
    pub teams: Vec<Object>,
    pub users: Vec<UserInfo>,
}

/// Every server function here is for admins only.
#[cfg(feature = "ssr")]
async fn admin() -> Result<(keystone_control::store::Store, keystone_control::auth::Principal), AppError> {
    let (store, who) = crate::state::caller().await?;
    if !who.is_admin() {
        return Err(AppError::Forbidden);
    }
    Ok((store, who))
}

#[server]
pub async fn directory() -> Result<DirectoryData, AppError> {
    let (store, who) = admin().await?;
    let teams = keystone_control::goal::Goal::new(&store, &who).list(keystone_control::Kind::Team).await?;
    Ok(DirectoryData { teams, users: keystone_control::users::list_users(&store).await? })
}

#[server]
pub async fn create_team(name: String, description: String) -> Result<(), AppError> {
    use keystone_control::goal::{Declaration, Goal};
    let (store, who) = admin().await?;
    let spec = keystone_control::TeamSpec { description: description.trim().to_owned(), alert_webhook: None };
    Goal::new(&store, &who).create("", name.trim(), Declaration::Team(spec), "").await?;
    Ok(())
}

/// Sets (or, with an empty URL, removes) where a team's alert notifications go.
#[server]
pub async fn set_alert_webhook(team: String, url: String) -> Result<(), AppError> {
    use keystone_control::goal::{Declaration, Goal};
    let (store, who) = admin().await?;
    let goal = Goal::new(&store, &who);
    let current = goal.get(keystone_control::Kind::Team, "", team.trim()).await?;
    let mut spec: keystone_control::TeamSpec = current.spec_as().map_err(|_| AppError::Internal)?;
    spec.alert_webhook = Some(url.trim().to_owned()).filter(|u| !u.is_empty());
    goal.update("", team.trim(), Declaration::Team(spec), "alert webhook changed", Some(current.version)).await?;
    Ok(())
}

#[server(endpoint = "create_user")]
pub async fn create_user(username: String, password: String, role: String, teams: String) -> Result<(), AppError> {
    use keystone_control::{Role, ValidationErrors};
    let (store, who) = admin().await?;
    let role = Role::parse(&role).ok_or_else(|| ValidationErrors::single("role", "must be viewer, editor or admin"))?;
    let teams = super::objects::split_list(&teams);
    keystone_control::users::upsert_user(&store, username.trim(), &password, role, &teams, false).await?;
    let detail = format!("role {}, teams {}", role.as_str(), teams.join(", "));
    store.record_account_event(&who.display, username.trim(), "user created", &detail).await;
    tracing::info!(user = %username.trim(), role = %role, by = %who.display, "User created.");
    Ok(())
}

/// Disables (`disabled` = "true") or enables a user; a disabled user's sessions and tokens stop
/// on their next request.
#[server]
pub async fn set_user_disabled(username: String, disabled: String) -> Result<(), AppError> {
    let (store, who) = admin().await?;
    let disabled = disabled == "true";
    if !keystone_control::users::set_user_disabled(&store, &who, username.trim(), disabled).await? {
        return Err(AppError::NotFound);
    }
    tracing::info!(user = %username.trim(), disabled, by = %who.display, "User access changed.");
    Ok(())
}

/// Takes a user out of a team.
#[server]
pub async fn remove_member(username: String, team: String) -> Result<(), AppError> {
    let (store, who) = admin().await?;
    if !keystone_control::users::remove_membership(&store, &who, username.trim(), team.trim()).await? {
        return Err(keystone_control::ValidationErrors::single("team", "the user is not a member of that team").into());
    }
    tracing::info!(user = %username.trim(), team = %team.trim(), by = %who.display, "User removed from a team.");
    Ok(())
}

/// Adds a user to a team, or changes their role on it: `own` keeps their own role there.
#[server(endpoint = "set_team_role")]
pub async fn set_team_role(username: String, team: String, role: String) -> Result<(), AppError> {
    use keystone_control::users::TeamGrant;
    let (store, who) = admin().await?;
    let grant = match role.trim() {
        "" | "own" => TeamGrant::parse(&team),
        r => TeamGrant::parse(&format!("{}:{r}", team.trim())),
    }
    .map_err(|e| keystone_control::ValidationErrors::single("team", e))?;
    if !keystone_control::users::set_membership(&store, &who, username.trim(), &grant).await? {
        return Err(keystone_control::ValidationErrors::single("username", "no such user").into());
    }
    tracing::info!(user = %username.trim(), team = %grant.team, by = %who.display, "Team role set.");
    Ok(())
}

/// Deletes a user for good (the name typed twice, so a slip deletes nobody): their sessions end
/// and the API tokens they created are deleted in the same step.
#[server(endpoint = "delete_user")]
pub async fn delete_user(username: String, confirm: String) -> Result<(), AppError> {
    let (store, who) = admin().await?;
    if confirm.trim() != username.trim() {
        return Err(keystone_control::ValidationErrors::single("confirm", "type the username to confirm").into());
    }
    if !keystone_control::users::delete_user(&store, &who, username.trim()).await? {
        return Err(keystone_control::ValidationErrors::single("username", "no such user").into());
    }
    tracing::info!(user = %username.trim(), by = %who.display, "User deleted.");
    Ok(())
}

#[component]
pub fn AdminPage() -> impl IntoView {
    let new_team = ServerAction::<CreateTeam>::new();
    let new_user = ServerAction::<CreateUser>::new();
    let webhook = ServerAction::<SetAlertWebhook>::new();
    let access = ServerAction::<SetUserDisabled>::new();
    let leave = ServerAction::<RemoveMember>::new();
    let grant = ServerAction::<SetTeamRole>::new();
    let delete = ServerAction::<DeleteUser>::new();
    let data = Resource::new(
        move || {
            (
                new_team.version().get(),
                new_user.version().get(),
                webhook.version().get(),
                access.version().get(),
                leave.version().get(),
                grant.version().get(),
                delete.version().get(),
            )
        },
        |_| directory(),
    );
    let leave_errors = field_errors(leave.value());
    let grant_errors = field_errors(grant.value());
    let delete_errors = field_errors(delete.value());
    let webhook_errors = field_errors(webhook.value());
    let team_errors = field_errors(new_team.value());
    let user_errors = field_errors(new_user.value());
    view! {
        <Title text="Teams & users · Keystone"/>
        <PageHeader title="Teams & users" subtitle="Teams own objects; roles decide what members may do."><span></span></PageHeader>
        <div class="grid gap-6 lg:grid-cols-2">
            <section>
                <h2 class="mb-3 text-lg font-medium">"New team"</h2>
                <FormStatus error=last_error(new_team.value())/>
                <ActionForm action=new_team attr:class=format!("{CARD} p-4 space-y-4")>
                    <Field label="Name" name="name" errors=team_errors required=true/>
                    <Field label="Description" name="description" errors=team_errors/>
                    <button type="submit" class=BUTTON>"Create team"</button>
                </ActionForm>
                <h2 class="mt-6 mb-3 text-lg font-medium">"Team alert webhook"</h2>
                <FormStatus error=last_error(webhook.value())/>
                <ActionForm action=webhook attr:class=format!("{CARD} p-4 space-y-4")>
                    <Field label="Team" name="team" errors=webhook_errors required=true/>
                    <Field label="Webhook URL" name="url" errors=webhook_errors help="Alert firings and resolutions are POSTed here as JSON; empty removes it."/>
                    <button type="submit" class=BUTTON_SECONDARY>"Save webhook"</button>
                </ActionForm>
            </section>
            <section>
                <h2 class="mb-3 text-lg font-medium">"New user"</h2>
                <FormStatus error=last_error(new_user.value())/>
                <ActionForm action=new_user attr:class=format!("{CARD} p-4 space-y-4")>
                    <Field label="Username" name="username" errors=user_errors required=true/>
                    <Field label="Password" name="password" kind="password" errors=user_errors required=true help="At least 10 characters."/>
                    <Field label="Role" name="role" kind="select:viewer,editor,admin" value="editor" errors=user_errors/>
                    <Field label="Teams" name="teams" errors=user_errors help="Comma-separated team names; `beta:viewer` gives another role on that team."/>
                    <button type="submit" class=BUTTON>"Create user"</button>
                </ActionForm>
                <h2 class="mt-6 mb-3 text-lg font-medium">"Remove from a team"</h2>
                <FormStatus error=last_error(leave.value())/>
                <ActionForm action=leave attr:class=format!("{CARD} p-4 space-y-4")>
                    <Field label="Username" name="username" errors=leave_errors required=true/>
                    <Field label="Team" name="team" errors=leave_errors required=true help="Their sessions lose the team and their tokens for it stop at once."/>
                    <button type="submit" class=BUTTON_SECONDARY>"Remove"</button>
                </ActionForm>
                <h2 class="mt-6 mb-3 text-lg font-medium">"Role on a team"</h2>
                <FormStatus error=last_error(grant.value())/>
                <ActionForm action=grant attr:class=format!("{CARD} p-4 space-y-4")>
                    <Field label="Username" name="username" errors=grant_errors required=true/>
                    <Field label="Team" name="team" errors=grant_errors required=true/>
                    <Field label="Role" name="role" kind="select:own,viewer,editor" value="own" errors=grant_errors help="Adds them to the team if needed; `own` keeps their own role there."/>
                    <button type="submit" class=BUTTON_SECONDARY>"Set role"</button>
                </ActionForm>
                <h2 class="mt-6 mb-3 text-lg font-medium">"Delete a user"</h2>
                <FormStatus error=last_error(delete.value())/>
                <ActionForm action=delete attr:class=format!("{CARD} p-4 space-y-4")>
                    <Field label="Username" name="username" errors=delete_errors required=true/>
                    <Field label="Type the username again" name="confirm" errors=delete_errors required=true help="Their sessions end and the API tokens they created are deleted."/>
                    <button type="submit" class=BUTTON_SECONDARY>"Delete user"</button>
                </ActionForm>
            </section>
        </div>
        <Suspense fallback=|| ()>
            {move || Suspend::new(async move {
                match data.await {
                    Err(e) => view! { <LoadError error=e/> }.into_any(),
                    Ok(d) => view! {
                        <div class="mt-8 grid gap-6 lg:grid-cols-2">
                            <div class=format!("{CARD} overflow-hidden")>
                                <table class="min-w-full divide-y divide-slate-200" data-testid="teams-table">
                                    <thead class="bg-slate-50"><tr><th class=TH>"Team"</th><th class=TH>"Description"</th><th class=TH>"Alert webhook"</th></tr></thead>
                                    <tbody class="divide-y divide-slate-100">
                                        {d.teams.into_iter().map(|t| view! {
                                            <tr><td class=format!("{TD} font-medium")>{t.name.clone()}</td>
                                            <td class=TD>{t.spec.get("description").and_then(|v| v.as_str()).unwrap_or("").to_owned()}</td>
                                            <td class=format!("{TD} font-mono text-xs")>{t.spec.get("alert_webhook").and_then(|v| v.as_str()).unwrap_or("").to_owned()}</td></tr>
                                        }).collect_view()}
                                    </tbody>
                                </table>
                            </div>
                            <div class=format!("{CARD} overflow-hidden")>
                                <table class="min-w-full divide-y divide-slate-200" data-testid="users-table">
                                    <thead class="bg-slate-50"><tr><th class=TH>"User"</th><th class=TH>"Role"</th><th class=TH>"Teams"</th><th class=TH>"Access"</th></tr></thead>
                                    <tbody class="divide-y divide-slate-100">
                                        {d.users.into_iter().map(|u| view! {
                                            <tr><td class=format!("{TD} font-medium")>{u.username.clone()}</td>
                                            <td class=TD>{u.role.as_str()}</td><td class=TD>{u.teams.join(", ")}</td>
                                            <td class=TD>
                                                <ActionForm action=access>
                                                    <input type="hidden" name="username" value=u.username.clone()/>
                                                    <input type="hidden" name="disabled" value=if u.disabled { "false" } else { "true" }/>
                                                    <button type="submit" class="text-sm text-indigo-600 hover:underline">
                                                        {if u.disabled { "Disabled · enable" } else { "Disable" }}
                                                    </button>
                                                </ActionForm>
                                            </td></tr>
                                        }).collect_view()}
                                    </tbody>
                                </table>
                            </div>
                        </div>
                    }.into_any(),
                }
            })}
        </Suspense>
    }
}
