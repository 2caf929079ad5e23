//! API tokens: created here, shown once, stored as a hash, scoped to one team and one role.

use crate::components::*;
use crate::error::AppError;
use keystone_control::TokenInfo;
use leptos::prelude::*;
use leptos_meta::Title;

#[server]
pub async fn list_tokens() -> Result<Vec<TokenInfo>, AppError> {
    let (store, who) = crate::state::caller().await?;
    Ok(keystone_control::auth::list_tokens(&store, &who).await?)
}

/// Returns the new token; it is never shown again.
#[server]
pub async fn create_token(
    name: String,
    team: String,
    role: String,
    #[server(default)] expires_in_days: String,
) -> Result<String, AppError> {
    use keystone_control::{Kind, Role, ValidationErrors};
    let (store, who) = crate::state::caller().await?;
    let role = Role::parse(&role).ok_or_else(|| ValidationErrors::single("role", "must be viewer or editor"))?;
    let expires_at = match expires_in_days.trim() {
        "" => None,
        days => match days.parse::<i64>() {
            Ok(d) if (1..=3650).contains(&d) => Some(keystone_control::store::now_ms() + d * 86_400_000),
            _ => {
                return Err(
                    ValidationErrors::single("expires_in_days", "must be a whole number of days, 1 to 3650").into()
                )
            }
        },
    };
    let team_obj = store
        .get(Kind::Team, "", team.trim())
        .await?
        .filter(|t| who.can_read(&t.id))
        .ok_or_else(|| ValidationErrors::single("team", format!("no team named {team:?}")))?;
    let (info, token) =
        keystone_control::users::create_token(&store, &who, name.trim(), &team_obj.id, role, expires_at).await?;
    tracing::info!(token = %info.name, team = %team, by = %who.display, "API token created.");
    Ok(token)
}

#[server]
pub async fn revoke_token(id: String) -> Result<(), AppError> {
    let (store, who) = crate::state::caller().await?;
    if !keystone_control::auth::revoke_token(&store, &who, &id).await? {
        return Err(AppError::NotFound);
    }
    tracing::info!(token_id = %id, by = %who.display, "API token revoked.");
    Ok(())
}

/// Changes the signed-in user's own password; the attempt counts against sign-in throttling, so
/// it cannot be used to guess the current one.
#[server(endpoint = "change_password")]
pub async fn change_password(current_password: String, new_password: String) -> Result<(), AppError> {
    let (state, who) = crate::state::signed_in().await?;
    let address = leptos_axum::extract::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .await
        .map(|c| c.0.ip().to_string())
        .unwrap_or_else(|_| "unknown".into());
    let attempt = match state.limiter.begin(&state.platform.store, &who.display, &address).await? {
        Ok(attempt) => attempt,
        Err(_) => return Err(AppError::Refused("Too many failed attempts. Try again later.".into())),
    };
    let Some(_permit) = state.limiter.hashing_permit() else {
        return Err(AppError::Refused("Too many password checks at once. Try again in a moment.".into()));
    };
    if !keystone_control::users::change_own_password(&state.platform.store, &who, &current_password, &new_password)
        .await?
    {
        return Err(
            keystone_control::ValidationErrors::single("current_password", "is not your current password").into()
        );
    }
    state.limiter.record_success(&state.platform.store, &who.display, attempt).await?;
    Ok(())
}

#[component]
pub fn TokensPage() -> impl IntoView {
    let create = ServerAction::<CreateToken>::new();
    let revoke = ServerAction::<RevokeToken>::new();
    let data = Resource::new(move || (create.version().get(), revoke.version().get()), |_| list_tokens());
    let errors = field_errors(create.value());
    let password = ServerAction::<ChangePassword>::new();
    let password_errors = field_errors(password.value());
    let teams =
        use_me().map(|m| if m.writable_teams.is_empty() { m.teams } else { m.writable_teams }).unwrap_or_default();
    view! {
        <Title text="API tokens · Keystone"/>
        <PageHeader title="API tokens" subtitle="For automation against /api/v1 (see /api/v1/openapi.json)."><span></span></PageHeader>
        <NewSecret value=create.value() test_id="new-token"/>
        <FormStatus error=last_error(create.value())/>
        <ActionForm action=create attr:class=format!("{CARD} mb-6 grid grid-cols-5 items-end gap-4 p-4")>
            <Field label="Name" name="name" errors required=true/>
            <div>
                <label for="t-team" class="block text-sm font-medium text-slate-700">"Team"</label>
                <select id="t-team" name="team" class=INPUT>
                    {teams.into_iter().map(|t| view! { <option value=t.clone()>{t.clone()}</option> }).collect_view()}
                </select>
            </div>
            <Field label="Role" name="role" kind="select:viewer,editor" value="viewer" errors/>
            <Field label="Expires in (days)" name="expires_in_days" help="Optional; empty for no expiry." errors/>
            <button type="submit" class=BUTTON>"Create token"</button>
        </ActionForm>
        <h2 class="mb-3 text-lg font-medium">"Your password"</h2>
        <FormStatus error=last_error(password.value())/>
        <Show when=move || matches!(password.value().get(), Some(Ok(())))>
            <p class="mb-3 text-sm text-emerald-700" data-testid="password-changed">"Password changed."</p>
        </Show>
        <ActionForm action=password attr:class=format!("{CARD} mb-6 grid grid-cols-3 items-end gap-4 p-4")>
            <Field label="Current password" name="current_password" kind="password" errors=password_errors required=true/>
            <Field label="New password" name="new_password" kind="password" errors=password_errors required=true help="At least 10 characters."/>
            <button type="submit" class=BUTTON_SECONDARY>"Change password"</button>
        </ActionForm>
        <Suspense fallback=|| ()>
            {move || Suspend::new(async move {
                match data.await {
                    Err(e) => view! { <LoadError error=e/> }.into_any(),
                    Ok(tokens) if tokens.is_empty() => view! { <EmptyState title="No tokens" body="Create one above.">""</EmptyState> }.into_any(),
                    Ok(tokens) => view! {
                        <div class=format!("{CARD} overflow-hidden")>
                            <table class="min-w-full divide-y divide-slate-200">
                                <thead class="bg-slate-50">
                                    <tr>
                                        <th class=TH>"Name"</th><th class=TH>"Team"</th><th class=TH>"Role"</th>
                                        <th class=TH>"Prefix"</th><th class=TH>"Created"</th><th class=TH>"State"</th>
                                    </tr>
                                </thead>
                                <tbody class="divide-y divide-slate-100">
                                    {tokens.into_iter().map(|t| view! {
                                        <tr>
                                            <td class=TD>{t.name.clone()}</td>
                                            <td class=TD>{t.team.clone()}</td>
                                            <td class=TD>{t.role.as_str()}</td>
                                            <td class=format!("{TD} font-mono")>{format!("{}…", t.prefix)}</td>
                                            <td class=format!("{TD} text-slate-500")>
                                                {format_time(t.created_at)}
                                                {t.expires_at.map(|at| format!(" · expires {}", format_time(at)))}
                                            </td>
                                            <td class=TD>
                                                {if t.revoked {
                                                    view! { <span class="text-slate-400">"revoked"</span> }.into_any()
                                                } else if t.expired {
                                                    view! { <span class="text-slate-400">"expired"</span> }.into_any()
                                                } else {
                                                    view! {
                                                        <ActionForm action=revoke>
                                                            <input type="hidden" name="id" value=t.id.clone()/>
                                                            <button type="submit" class="text-sm text-red-600 hover:underline">"Revoke"</button>
                                                        </ActionForm>
                                                    }.into_any()
                                                }}
                                            </td>
                                        </tr>
                                    }).collect_view()}
                                </tbody>
                            </table>
                        </div>
                    }.into_any(),
                }
            })}
        </Suspense>
    }
}
