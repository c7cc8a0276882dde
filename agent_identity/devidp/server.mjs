// =====================================================================================
//  DEV ONLY -- agent-identity local authorization server.
//
//  An OAuth 2.1 / OpenID Connect authorization server for tests and demos, built on the
//  npm package `oidc-provider` (OpenID Certified). It binds 127.0.0.1 only, keeps every
//  artifact in memory, has well-known client secrets, password-less logins and JSON test
//  hooks under /dev/ that approve anything. NEVER run it anywhere reachable from a network
//  and never point a real client at it.
//
//  Usage:  node server.mjs [--config FILE] [--port N]     (port 0 = ephemeral; env DEVIDP_PORT)
//  When listening it prints ONE JSON line on stdout:
//      {"ready": true, "issuer": "http://127.0.0.1:PORT", "port": PORT}
//  Everything else (banner, diagnostics) goes to stderr.
//
//  Beyond stock oidc-provider it adds:
//    * RFC 8693 token exchange (grant type urn:ietf:params:oauth:grant-type:token-exchange)
//      issuing JWT access tokens with `act` (nested when the subject token had one);
//    * headless interaction routes  GET /interaction/:uid, POST .../login|confirm|abort;
//    * test hooks (loopback only):   GET /dev/health, GET|DELETE /dev/requests,
//      GET /dev/ciba, POST /dev/ciba/:id/approve|deny, POST /dev/device/:user_code/approve|deny,
//      GET|POST /dev/quirks, GET|POST /dev/dpop, POST /dev/accounts/:login/revoke-grants;
//    * quirk toggles reproducing real non-compliant servers (QUIRKS below), off by default;
//    * DPoP (RFC 9449) with switchable nonces (POST /dev/dpop), also on token exchange, and
//      optionally announced for every token (`dpop_bound_access_tokens`);
//    * Rich Authorization Requests (RFC 9396) of the types `payment_initiation` and
//      `agent_action`: shown on the consent page, carried by authorization codes, refresh
//      tokens, CIBA requests (the approve hook grants exactly the details asked for) and
//      token exchange, and returned in token responses and JWT access tokens;
//    * knobs oidc-provider does not have: CIBA / device `interval` in the initial response,
//      one `slow_down` answer per CIBA / device poll sequence, CIBA ping delivery to
//      loopback http notification endpoints.
// =====================================================================================

import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as querystring from 'node:querystring';

import Provider, { errors } from 'oidc-provider';
// Internal module of oidc-provider (no "exports" map, so importable). Used for two things
// only: making backchannel_client_notification_endpoint accept loopback http (the list is
// consulted at validation time) and wrapping the built-in CIBA/device grant handlers
// for the `slow_down` knob. Both are checked at startup and fail loudly if they move.
import { HTTPS_URI } from 'oidc-provider/lib/consts/client_attributes.js';
import internals from 'oidc-provider/lib/helpers/weak_cache.js';
// Grant helpers of oidc-provider (DPoP validation and binding, RAR), for the custom token
// exchange grant below; the built-in grants get the same ones bound to the provider.
import * as grantHelpers from 'oidc-provider/lib/helpers/grants.js';

const GT_TOKEN_EXCHANGE = 'urn:ietf:params:oauth:grant-type:token-exchange';
const GT_CIBA = 'urn:openid:params:grant-type:ciba';
const GT_DEVICE = 'urn:ietf:params:oauth:grant-type:device_code';
const TT_ACCESS_TOKEN = 'urn:ietf:params:oauth:token-type:access_token';
const LOOPBACK_HOSTS = new Set(['127.0.0.1', 'localhost', '[::1]', '::1']);

// ------------------------------------------------------------------ arguments & config

function parseArgs(argv) {
  const out = { config: undefined, port: undefined };
  for (let i = 0; i < argv.length; i += 1) {
    const arg = argv[i];
    const [flag, inline] = arg.includes('=') ? arg.split(/=(.*)/s, 2) : [arg, undefined];
    const value = () => (inline !== undefined ? inline : argv[++i]);
    if (flag === '--config') out.config = value();
    else if (flag === '--port') out.port = value();
    else if (flag === '--help' || flag === '-h') {
      process.stderr.write('usage: node server.mjs [--config FILE] [--port N]\n');
      process.exit(0);
    } else {
      process.stderr.write(`devidp: unknown argument ${arg}\n`);
      process.exit(2);
    }
  }
  return out;
}

const DEFAULT_CONFIG = {
  port: 0,
  clients: [],
  accounts: {
    alice: { email: 'alice@example.test', name: 'Alice Example' },
    bob: { email: 'bob@example.test', name: 'Bob Example' },
  },
  resources: {
    'https://calendar.example/api': { scope: 'calendar.read calendar.write' },
    'https://mail.example/api': { scope: 'mail.read mail.send' },
    'https://payments.example/api': { scope: 'payments.read payments.write' },
  },
  ttl: {
    access_token: 300,
    client_credentials: 300,
    refresh_token: 14 * 24 * 3600,
    authorization_code: 60,
    device_code: 600,
    ciba: 600,
    id_token: 3600,
    interaction: 600,
    session: 24 * 3600,
    grant: 14 * 24 * 3600,
  },
  use_granted_resource: true,
  ciba: { interval: null, slow_down_once: false, binding_message_max_length: 256 },
  device: { interval: null, slow_down_once: false },
  // require_nonce: DPoP nonces at the token/PAR endpoints; bound: announce in discovery
  // that every access token is DPoP-bound (and bind every client); algs: the proof
  // algorithms offered (dpop_signing_alg_values_supported).
  dpop: { require_nonce: false, bound: false, algs: ['ES256', 'EdDSA', 'RS256'] },
  // Hold every refresh_token grant this many milliseconds before processing it; a request
  // whose client disconnected meanwhile is dropped unprocessed (tests of crashed clients).
  refresh_delay_ms: 0,
};

// Started by the Python launcher: exit when the launcher goes away (its end of our stdin
// closes), even if it was killed without a chance to stop us.
if (process.env.DEVIDP_EXIT_WITH_PARENT === '1') {
  process.stdin.on('end', () => process.exit(0));
  process.stdin.on('error', () => process.exit(0));
  process.stdin.resume();
}

function loadConfig(path) {
  let fromFile = {};
  if (path) {
    fromFile = JSON.parse(fs.readFileSync(path, 'utf8'));
  }
  const cfg = { ...DEFAULT_CONFIG, ...fromFile };
  for (const key of ['ttl', 'ciba', 'device', 'dpop']) {
    cfg[key] = { ...DEFAULT_CONFIG[key], ...(fromFile[key] || {}) };
  }
  return cfg;
}

const args = parseArgs(process.argv.slice(2));
const config = loadConfig(args.config);
const listenPort = Number(args.port ?? process.env.DEVIDP_PORT ?? config.port ?? 0);

process.stderr.write(
  '*** agent-identity dev IdP: DEVELOPMENT ONLY. In-memory, well-known secrets, '
  + 'password-less logins, approve-anything test hooks. Bound to 127.0.0.1. ***\n',
);

// ------------------------------------------------------------------ small helpers

function isLoopbackUrl(value) {
  const url = URL.parse(value);
  return !!url && (url.protocol === 'http:' || url.protocol === 'https:')
    && LOOPBACK_HOSTS.has(url.hostname);
}

function splitScope(scope) {
  return (scope || '').split(' ').filter(Boolean);
}

function b64urlJson(part) {
  return JSON.parse(Buffer.from(part, 'base64url').toString('utf8'));
}

function htmlEscape(value) {
  return String(value)
    .replaceAll('&', '&amp;').replaceAll('<', '&lt;').replaceAll('>', '&gt;')
    .replaceAll('"', '&quot;').replaceAll("'", '&#39;');
}

async function readForm(ctx) {
  const chunks = [];
  let size = 0;
  for await (const chunk of ctx.req) {
    size += chunk.length;
    if (size > 64 * 1024) ctx.throw(413, 'body too large');
    chunks.push(chunk);
  }
  const raw = Buffer.concat(chunks).toString('utf8');
  if (!raw) return {};
  if (ctx.is('application/json')) return JSON.parse(raw);
  return querystring.parse(raw);
}

function page(title, body) {
  return `<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>${htmlEscape(title)} - agent-identity dev IdP</title></head>
<body>
<p><strong>DEV ONLY</strong> local authorization server - never use with real accounts.</p>
<h1>${htmlEscape(title)}</h1>
${body}
</body></html>`;
}

// ------------------------------------------------------------------ keys

// One RSA signing key, generated per run: ID tokens, JWT access tokens (RS256).
const { privateKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
const signingJwk = {
  ...privateKey.export({ format: 'jwk' }),
  kid: `devidp-${crypto.randomBytes(6).toString('hex')}`,
  use: 'sig',
  alg: 'RS256',
};
const verifyKey = crypto.createPublicKey({ key: signingJwk, format: 'jwk' });

// ------------------------------------------------------------------ accounts & resources

const accounts = config.accounts || {};

async function findAccount(_ctx, sub) {
  if (!Object.hasOwn(accounts, sub)) return undefined;
  const data = accounts[sub] || {};
  return {
    accountId: sub,
    async claims() {
      return {
        sub,
        email: data.email,
        email_verified: data.email !== undefined ? true : undefined,
        name: data.name,
      };
    },
  };
}

const resources = new Map(
  Object.entries(config.resources || {}).map(([uri, info]) => [uri, {
    scope: typeof info === 'string' ? info : info.scope,
    audience: (typeof info === 'object' && info.audience) || uri,
    accessTokenTTL: (typeof info === 'object' && info.access_token_ttl) || config.ttl.access_token,
  }]),
);
const resourceScopes = new Set([...resources.values()].flatMap((r) => splitScope(r.scope)));

function resourceServerInfo(uri) {
  const info = resources.get(uri);
  if (!info) return undefined;
  return {
    scope: info.scope,
    // quirk wrong_audience: tokens name another audience than the resource asked for
    audience: quirks.wrong_audience ? 'https://elsewhere.example/api' : info.audience,
    accessTokenTTL: info.accessTokenTTL,
    accessTokenFormat: 'jwt',
  };
}

// ------------------------------------------------------------------ RAR (RFC 9396)

const RAR_TYPES = ['payment_initiation', 'agent_action'];

function canonicalJson(value) {
  if (Array.isArray(value)) return `[${value.map(canonicalJson).join(',')}]`;
  if (value && typeof value === 'object') {
    return `{${Object.keys(value).sort().map((k) => `${JSON.stringify(k)}:${canonicalJson(value[k])}`).join(',')}}`;
  }
  return JSON.stringify(value);
}

function parseDetails(raw) {
  if (raw === undefined || raw === null) return undefined;
  const details = typeof raw === 'string' ? JSON.parse(raw) : raw;
  return Array.isArray(details) && details.length ? details : undefined;
}

function isString(value) {
  return typeof value === 'string' && value.length > 0;
}

// payment_initiation (the RFC 9396 §2.1 example): an amount, a creditor, a reference.
function validatePaymentInitiation(_ctx, detail) {
  const amount = detail.instructedAmount;
  const known = new Set(['type', 'locations', 'actions', 'datatypes', 'identifier', 'privileges',
    'instructedAmount', 'creditorName', 'creditorAccount', 'remittanceInformationUnstructured']);
  const unknown = Object.keys(detail).filter((k) => !known.has(k));
  if (unknown.length) {
    throw new errors.InvalidAuthorizationDetails(`payment_initiation: unknown member(s) ${unknown.join(', ')}`);
  }
  if (!amount || !isString(amount.currency) || !/^[0-9]+(\.[0-9]{1,2})?$/u.test(String(amount.amount))) {
    throw new errors.InvalidAuthorizationDetails('payment_initiation needs instructedAmount {currency, amount}');
  }
  if (!isString(detail.creditorName)) {
    throw new errors.InvalidAuthorizationDetails('payment_initiation needs creditorName');
  }
}

function validateAgentAction(_ctx, detail) {
  if (!isString(detail.tool) || !isString(detail.action_hash)) {
    throw new errors.InvalidAuthorizationDetails('agent_action needs tool and action_hash');
  }
}

// Details a token may carry: those asked for in this request (a subset of what the source
// holds, when it holds any), else all the source holds.
function detailsForToken(ctx, source) {
  if (quirks.drop_authorization_details) return undefined;
  const requested = parseDetails(ctx.oidc.params?.authorization_details);
  const held = source?.rar;
  if (requested) {
    if (held) {
      const allowed = new Set(held.map(canonicalJson));
      if (requested.some((d) => !allowed.has(canonicalJson(d)))) {
        throw new errors.InvalidAuthorizationDetails('authorization_details beyond those granted');
      }
    }
    return requested;
  }
  return held;
}

// ------------------------------------------------------------------ clients

// backchannel_client_notification_endpoint is https-only in oidc-provider's schema; this dev
// server also accepts loopback http (our fetch override below refuses non-loopback http).
{
  const index = HTTPS_URI.indexOf('backchannel_client_notification_endpoint');
  if (index === -1) throw new Error('oidc-provider internals changed: HTTPS_URI');
  HTTPS_URI.splice(index, 1);
}

for (const client of config.clients || []) {
  const endpoint = client.backchannel_client_notification_endpoint;
  if (endpoint && URL.parse(endpoint)?.protocol === 'http:' && !isLoopbackUrl(endpoint)) {
    throw new Error(`client ${client.client_id}: http notification endpoints must be loopback`);
  }
}

// ------------------------------------------------------------------ in-memory dev state

const cibaPending = new Map(); // auth_req_id -> summary
const slowedDown = new Set(); // auth_req_id / device_code values already answered slow_down
let requestLog = [];
const LOGGED_ROUTES = new Set([
  'token', 'pushed_authorization_request', 'revocation', 'introspection',
  'device_authorization', 'backchannel_authentication', 'registration',
]);
// Names (never values) of the secret-bearing form fields reported in the request log.
const SECRET_FIELDS = [
  'client_secret', 'client_assertion', 'code', 'code_verifier', 'refresh_token',
  'device_code', 'token', 'subject_token', 'actor_token', 'auth_req_id',
];
// Quirks of real non-compliant servers, toggled by POST /dev/quirks (same names as the
// django-oauth-toolkit test server of the test suite).
const quirks = {
  refresh_invalid_grant_empty_body: false, // invalid_grant on refresh: 400, empty body
  client_auth_403: false, // invalid_client: 403 with a non-OAuth JSON body
  refresh_ignores_scope: false, // `scope` ignored on refresh: the grant's full scope issued
  omit_scope: false, // `scope` never sent in token responses
  drop_authorization_details: false, // tokens never carry the RAR details asked for
  dpop_token_type_bearer: false, // a DPoP-bound token is announced as token_type Bearer
  wrong_audience: false, // access tokens name another audience than the resource
};
const grantsByAccount = new Map(); // accountId -> Set(grantId), for revoke-grants

// ------------------------------------------------------------------ provider config

const ttl = config.ttl;
const STATIC_SCOPES = new Set(['openid', 'offline_access', 'profile', 'email']);

for (const client of config.clients || []) {
  // oidc-provider allows RAR types per client; the static clients may use them all.
  if (client.authorization_details_types === undefined) client.authorization_details_types = RAR_TYPES;
  if (config.dpop.bound && client.dpop_bound_access_tokens === undefined) {
    client.dpop_bound_access_tokens = true;
  }
}

const providerConfig = {
  clients: config.clients || [],
  enabledJWA: { dPoPSigningAlgValues: config.dpop.algs },
  findAccount,
  jwks: { keys: [signingJwk] },
  cookies: { keys: [crypto.randomBytes(32).toString('base64url')] },
  scopes: [...STATIC_SCOPES],
  claims: {
    openid: ['sub'],
    email: ['email', 'email_verified'],
    profile: ['name'],
  },
  responseTypes: ['code'],
  pkce: { required: () => true }, // S256 is the only method oidc-provider 9 supports
  // Always rotate refresh tokens; reuse of a rotated one revokes the whole grant.
  rotateRefreshToken: true,
  // (issueRefreshToken left at its default: needs `offline_access`, which in turn is only
  // honoured with prompt=consent.)
  clientBasedCORS: () => false,
  extraTokenClaims: (_ctx, token) => token.extra || undefined,
  ttl: {
    AccessToken: (_ctx, token) => token.resourceServer?.accessTokenTTL || ttl.access_token,
    ClientCredentials: (_ctx, token) => token.resourceServer?.accessTokenTTL
      || ttl.client_credentials,
    AuthorizationCode: ttl.authorization_code,
    BackchannelAuthenticationRequest: (ctx) => {
      const requested = Number(ctx?.oidc?.params?.requested_expiry);
      return requested > 0 ? Math.min(requested, ttl.ciba) : ttl.ciba;
    },
    DeviceCode: ttl.device_code,
    IdToken: ttl.id_token,
    Interaction: ttl.interaction,
    RefreshToken: ttl.refresh_token,
    Session: ttl.session,
    Grant: ttl.grant,
  },
  interactions: {
    url: (_ctx, interaction) => `/interaction/${interaction.uid}`,
  },
  renderError: async (ctx, out) => {
    ctx.type = 'html';
    ctx.body = page('Error', Object.entries(out)
      .map(([k, v]) => `<p><strong>${htmlEscape(k)}</strong>: <span class="${htmlEscape(k)}">${htmlEscape(v)}</span></p>`)
      .join('\n'));
  },
  // oidc-provider's fetch guard refuses special-use (incl. loopback) addresses; this dev server
  // delivers CIBA pings to loopback receivers and nowhere else over plain http.
  fetch: (url, options) => {
    const target = URL.parse(String(url));
    if (target && LOOPBACK_HOSTS.has(target.hostname)) {
      const opts = { ...options };
      delete opts.dispatcher;
      return globalThis.fetch(url, opts);
    }
    if (target && target.protocol !== 'https:') {
      return Promise.reject(new Error('devidp refuses non-loopback http targets'));
    }
    return globalThis.fetch(url, options);
  },
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    introspection: {
      enabled: true,
      allowedPolicy: async (ctx, client, token) => !(client.clientAuthMethod === 'none'
        && token.clientId !== ctx.oidc.client.clientId),
    },
    revocation: {
      enabled: true,
      allowedPolicy: async (_ctx, client, token) => {
        if (token.clientId !== client.clientId) {
          if (client.clientAuthMethod === 'none') return false;
          throw new errors.InvalidRequest('client is not authorized to revoke the presented token');
        }
        return true;
      },
    },
    registration: { enabled: true, initialAccessToken: false },
    registrationManagement: { enabled: true, rotateRegistrationAccessToken: true },
    pushedAuthorizationRequests: { enabled: true, requirePushedAuthorizationRequests: false },
    rpInitiatedLogout: { enabled: true },
    userinfo: { enabled: true },
    dPoP: {
      enabled: true,
      nonceSecret: crypto.randomBytes(32),
      requireNonce: () => !!config.dpop.require_nonce,
    },
    richAuthorizationRequests: {
      enabled: true,
      types: {
        payment_initiation: { validate: validatePaymentInitiation },
        agent_action: { validate: validateAgentAction },
      },
      // A code carries the details asked for in its authorization request (approved on
      // the consent page, which adds them to the grant).
      authorizationDetailsForGrantSource: async (ctx) => parseDetails(ctx.oidc.params?.authorization_details),
      authorizationDetailsForAccessToken: async (ctx, _token, source) => detailsForToken(ctx, source),
      authorizationDetailsForIntrospection: async (_ctx, token) => token.rar,
    },
    deviceFlow: {
      enabled: true,
      charset: 'base-20',
      mask: '****-****',
      userCodeInputSource: async (ctx, form, out, err) => {
        const msg = err
          ? `<p><span class="error">${htmlEscape(out?.error || err.name || 'error')}</span>: <span class="error_description">${htmlEscape(out?.error_description || err.message || '')}</span></p>`
          : '<p>Enter the code displayed on your device</p>';
        ctx.body = page('Device sign-in', `${msg}\n${form}\n<button type="submit" form="op.deviceInputForm">Continue</button>`);
      },
      userCodeConfirmSource: async (ctx, form, client, _deviceInfo, userCode) => {
        ctx.body = page('Confirm device', `<p>Client <strong>${htmlEscape(client.clientName || client.clientId)}</strong> shows the code <code>${htmlEscape(userCode)}</code>.</p>
${form}
<button type="submit" form="op.deviceConfirmForm">Continue</button>
<button type="submit" form="op.deviceConfirmForm" value="yes" name="abort">Abort</button>`);
      },
      successSource: async (ctx) => {
        ctx.body = page('Sign-in success', '<p class="success">Device sign-in complete. You can close this page.</p>');
      },
    },
    ciba: {
      enabled: true,
      deliveryModes: ['poll', 'ping'],
      processLoginHint: async (_ctx, loginHint) => (Object.hasOwn(accounts, loginHint) ? loginHint : undefined),
      processLoginHintToken: async () => {
        throw new errors.InvalidRequest('login_hint_token is not supported by the dev IdP');
      },
      validateBindingMessage: async (_ctx, message) => {
        if (message === undefined) return;
        const max = config.ciba.binding_message_max_length;
        // eslint-disable-next-line no-control-regex
        if (!message.length || message.length > max || /[\u0000-\u001f\u007f]/u.test(message)) {
          throw new errors.InvalidBindingMessage(`binding_message must be 1-${max} printable characters`);
        }
      },
      validateRequestContext: async () => {},
      verifyUserCode: async () => {},
      triggerAuthenticationDevice: async (ctx, request, account, client) => {
        cibaPending.set(request.jti, {
          auth_req_id: request.jti,
          account: account.accountId,
          login_hint: request.params.login_hint,
          client_id: client.clientId,
          binding_message: request.params.binding_message,
          scope: request.scope,
          resource: request.resource,
          authorization_details: request.params.authorization_details
            ? JSON.parse(request.params.authorization_details) : undefined,
          delivery_mode: client.backchannelTokenDeliveryMode,
        });
        if (config.ciba.interval) {
          ctx.body.interval = Number(config.ciba.interval);
        }
      },
    },
    resourceIndicators: {
      enabled: true,
      // No default resource: without `resource` an access token is for userinfo (opaque).
      defaultResource: async (_ctx, _client, oneOf) => {
        if (Array.isArray(oneOf)) return oneOf.length === 1 ? oneOf[0] : undefined;
        return oneOf || undefined;
      },
      // A token request without `resource` gets a JWT for the granted resource, when exactly
      // one was granted (even when `openid` was asked for).
      useGrantedResource: async () => !!config.use_granted_resource,
      getResourceServerInfo: async (_ctx, resourceIndicator) => {
        const info = resourceServerInfo(resourceIndicator);
        if (!info) throw new errors.InvalidTarget(`unknown resource ${resourceIndicator}`);
        return info;
      },
    },
  },
};

// ------------------------------------------------------------------ token exchange (RFC 8693)

function verifyOwnJwt(token, issuer) {
  const parts = token.split('.');
  if (parts.length !== 3) return undefined;
  let header;
  let payload;
  try {
    header = b64urlJson(parts[0]);
    payload = b64urlJson(parts[1]);
  } catch {
    return undefined;
  }
  if (header.alg !== 'RS256' || header.kid !== signingJwk.kid) return undefined;
  const ok = crypto.verify(
    'sha256',
    Buffer.from(`${parts[0]}.${parts[1]}`),
    verifyKey,
    Buffer.from(parts[2], 'base64url'),
  );
  if (!ok || payload.iss !== issuer || header.typ !== 'at+jwt') return undefined;
  const now = Math.floor(Date.now() / 1000);
  if (typeof payload.exp !== 'number' || payload.exp <= now - 5) return undefined;
  return {
    sub: payload.sub,
    clientId: payload.client_id,
    scope: payload.scope || '',
    aud: payload.aud,
    act: payload.act,
    exp: payload.exp,
    cnf: payload.cnf,
  };
}

async function resolveAccessToken(provider, value, label) {
  if (typeof value !== 'string' || !value) return undefined;
  const jwt = verifyOwnJwt(value, provider.issuer);
  if (jwt) return jwt;
  for (const Model of [provider.AccessToken, provider.ClientCredentials]) {
    // eslint-disable-next-line no-await-in-loop
    const found = await Model.find(value);
    if (found && !found.isExpired) {
      return {
        sub: found.accountId || found.clientId,
        clientId: found.clientId,
        scope: found.scope || '',
        aud: found.aud,
        act: found.extra?.act,
        exp: found.exp,
        cnf: found.jkt ? { jkt: found.jkt } : undefined,
      };
    }
  }
  throw new errors.InvalidGrant(`${label} is invalid, expired or was not issued by this server`);
}

function firstOrOnly(value, name) {
  if (value === undefined) return undefined;
  if (Array.isArray(value)) {
    if (value.length > 1) throw new errors.InvalidTarget(`only one ${name} value is supported`);
    return value[0];
  }
  return value;
}

async function tokenExchangeHandler(ctx) {
  const { provider, client } = ctx.oidc;
  const params = ctx.oidc.params;
  // RFC 9449: the issued token is bound to the key of the request's proof, if any.
  const dPoP = await grantHelpers.validateDpop(provider, ctx);
  grantHelpers.checkDpopRequired(provider, ctx, dPoP);

  if (!params.subject_token) throw new errors.InvalidRequest('missing required parameter subject_token');
  if (!params.subject_token_type) throw new errors.InvalidRequest('missing required parameter subject_token_type');
  if (params.subject_token_type !== TT_ACCESS_TOKEN) {
    throw new errors.InvalidRequest('unsupported subject_token_type');
  }
  if (!!params.actor_token !== !!params.actor_token_type) {
    throw new errors.InvalidRequest('actor_token_type must be present if and only if actor_token is');
  }
  if (params.actor_token_type && params.actor_token_type !== TT_ACCESS_TOKEN) {
    throw new errors.InvalidRequest('unsupported actor_token_type');
  }
  if (params.requested_token_type && params.requested_token_type !== TT_ACCESS_TOKEN) {
    throw new errors.InvalidRequest('unsupported requested_token_type');
  }

  const subject = await resolveAccessToken(provider, params.subject_token, 'subject_token');
  if (!subject) throw new errors.InvalidGrant('subject_token is invalid');

  let actor;
  if (params.actor_token) {
    actor = await resolveAccessToken(provider, params.actor_token, 'actor_token');
    if (!actor) throw new errors.InvalidGrant('actor_token is invalid');
    if (actor.clientId !== client.clientId) {
      throw new errors.InvalidGrant('actor_token was not issued to the authenticated client');
    }
  }

  // Target: resource (RFC 8707) and/or audience (a configured resource URI or audience).
  const resource = firstOrOnly(params.resource, 'resource');
  const audience = firstOrOnly(params.audience, 'audience');
  let target = resource;
  if (audience !== undefined) {
    const byAudience = [...resources.entries()].find(([uri, info]) => uri === audience
      || info.audience === audience)?.[0];
    if (!byAudience) throw new errors.InvalidTarget('unknown audience');
    if (target !== undefined && target !== byAudience) {
      throw new errors.InvalidTarget('resource and audience name different targets');
    }
    target = byAudience;
  }
  if (target === undefined) {
    const subjectAud = Array.isArray(subject.aud) ? subject.aud : [subject.aud];
    target = subjectAud.find((aud) => resources.has(aud));
  }
  if (target === undefined) throw new errors.InvalidTarget('a resource or audience is required');
  const info = resourceServerInfo(target);
  if (!info) throw new errors.InvalidTarget(`unknown resource ${target}`);

  // Scope: a subset of the subject token's scope, limited to the target's scopes.
  const subjectScopes = new Set(splitScope(subject.scope));
  const targetScopes = new Set(splitScope(info.scope));
  let scopes;
  if (params.scope) {
    scopes = splitScope(params.scope);
    const beyond = scopes.filter((s) => !subjectScopes.has(s));
    if (beyond.length) throw new errors.InvalidScope('requested scope exceeds the subject_token scope', beyond.join(' '));
    const foreign = scopes.filter((s) => !targetScopes.has(s));
    if (foreign.length) throw new errors.InvalidScope('requested scope is not available at the target resource', foreign.join(' '));
  } else {
    scopes = [...subjectScopes].filter((s) => targetScopes.has(s));
    if (!scopes.length) throw new errors.InvalidScope('the subject_token carries no scope for the target resource');
  }

  const at = new provider.AccessToken({
    accountId: subject.sub,
    client,
    gty: 'token_exchange',
    scope: scopes.join(' '),
  });
  at.resourceServer = new provider.ResourceServer(target, info);
  const now = Math.floor(Date.now() / 1000);
  const lifetime = Math.min(info.accessTokenTTL, Math.max(1, (subject.exp || now + info.accessTokenTTL) - now));
  at.expiresIn = lifetime;

  let act = subject.act;
  if (actor) {
    act = subject.act ? { sub: actor.sub, act: subject.act } : { sub: actor.sub };
  }
  if (act) at.extra = { act };
  if (dPoP) {
    await grantHelpers.checkDpopReplay(provider, ctx, dPoP, client.clientId, errors.InvalidGrant);
    at.setThumbprint('jkt', dPoP.thumbprint);
  }
  // RFC 9396 §6: the details asked for (their types were checked by the token endpoint).
  await grantHelpers.applyAuthorizationDetails(provider, ctx, at, undefined);

  ctx.oidc.entity('AccessToken', at);
  const value = await at.save();

  ctx.body = {
    access_token: value,
    issued_token_type: TT_ACCESS_TOKEN,
    token_type: at.tokenType,
    expires_in: lifetime,
    scope: at.scope,
    ...(at.rar ? { authorization_details: at.rar } : {}),
  };
}

// ------------------------------------------------------------------ interaction routes

function loginPage(uid, details, params) {
  return page('Sign-in', `<p>Client <code>${htmlEscape(params.client_id)}</code> asks you to sign in.</p>
<form method="post" action="/interaction/${htmlEscape(uid)}/login" id="login">
  <label>Login <input type="text" name="login" autofocus></label>
  <button type="submit">Sign in</button>
</form>
<form method="post" action="/interaction/${htmlEscape(uid)}/abort" id="abort"><button type="submit">Cancel</button></form>
<!-- prompt: ${htmlEscape(JSON.stringify(details))} -->`);
}

function consentPage(uid, details, params) {
  const scopes = splitScope(params.scope);
  const items = scopes.map((s) => `<li class="scope">${htmlEscape(s)}</li>`).join('');
  const resourcesRequested = [].concat(params.resource || []);
  const resItems = resourcesRequested.map((r) => `<li class="resource">${htmlEscape(r)}</li>`).join('');
  const rar = parseDetails(params.authorization_details) || [];
  const rarItems = rar.map((d) => `<li class="authorization_detail">${htmlEscape(JSON.stringify(d))}</li>`).join('');
  return page('Authorize', `<p>Client <code>${htmlEscape(params.client_id)}</code> asks for:</p>
<ul>${items}</ul>
${resItems ? `<p>at</p><ul>${resItems}</ul>` : ''}
${rarItems ? `<p>to do exactly</p><ul>${rarItems}</ul>` : ''}
<form method="post" action="/interaction/${htmlEscape(uid)}/confirm" id="confirm"><button type="submit">Allow</button></form>
<form method="post" action="/interaction/${htmlEscape(uid)}/abort" id="abort"><button type="submit">Deny</button></form>`);
}

async function interactionRoutes(ctx, provider) {
  const match = /^\/interaction\/([^/]+)(?:\/(login|confirm|abort))?$/u.exec(ctx.path);
  if (!match) return false;
  const [, uid, action] = match;
  ctx.set('cache-control', 'no-store');

  let details;
  try {
    details = await provider.interactionDetails(ctx.req, ctx.res);
  } catch (err) {
    ctx.status = 400;
    ctx.type = 'html';
    ctx.body = page('Error', `<p class="error">${htmlEscape(err.error_description || err.message)}</p>`);
    return true;
  }
  if (details.uid !== uid) {
    ctx.throw(400, 'interaction mismatch');
  }
  const { prompt, params, session, grantId } = details;

  if (ctx.method === 'GET' && !action) {
    ctx.type = 'html';
    ctx.body = prompt.name === 'login'
      ? loginPage(uid, prompt.details, params)
      : consentPage(uid, prompt.details, params);
    return true;
  }
  if (ctx.method !== 'POST' || !action) ctx.throw(405);

  const form = await readForm(ctx);
  ctx.respond = false; // interactionFinished writes the 303 itself

  if (action === 'abort') {
    await provider.interactionFinished(ctx.req, ctx.res, {
      error: 'access_denied',
      error_description: 'End-User aborted interaction',
    }, { mergeWithLastSubmission: false });
    return true;
  }

  if (action === 'login') {
    const login = String(form.login || '');
    if (prompt.name !== 'login' || !Object.hasOwn(accounts, login)) {
      ctx.respond = true;
      ctx.status = 400;
      ctx.type = 'html';
      ctx.body = page('Sign-in failed', `<p class="error">unknown login</p>${loginPage(uid, prompt.details, params)}`);
      return true;
    }
    await provider.interactionFinished(ctx.req, ctx.res, {
      login: { accountId: login },
    }, { mergeWithLastSubmission: false });
    return true;
  }

  // confirm: grant exactly what was asked for (OIDC scopes, claims, RFC 8707 resource scopes).
  if (prompt.name !== 'consent') {
    ctx.respond = true;
    ctx.throw(400, 'no consent pending for this interaction');
  }
  const grant = grantId
    ? await provider.Grant.find(grantId)
    : new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
  const d = prompt.details;
  if (d.missingOIDCScope) grant.addOIDCScope(d.missingOIDCScope.join(' '));
  if (d.missingOIDCClaims) grant.addOIDCClaims(d.missingOIDCClaims);
  if (d.missingResourceScopes) {
    for (const [indicator, scope] of Object.entries(d.missingResourceScopes)) {
      grant.addResourceScope(indicator, scope.join(' '));
    }
  }
  if (d.rar) for (const detail of d.rar) grant.addRar(detail);
  const result = { consent: { grantId: await grant.save() } };
  await provider.interactionFinished(ctx.req, ctx.res, result, { mergeWithLastSubmission: true });
  return true;
}

// ------------------------------------------------------------------ dev hooks

function grantForRequest(provider, accountId, clientId, scope, resource) {
  const grant = new provider.Grant({ accountId, clientId });
  const scopes = splitScope(scope);
  const oidc = scopes.filter((s) => STATIC_SCOPES.has(s));
  if (oidc.length) grant.addOIDCScope(oidc.join(' '));
  for (const uri of [].concat(resource || [])) {
    const info = resources.get(uri);
    if (!info) continue;
    const allowed = new Set(splitScope(info.scope));
    const granted = scopes.filter((s) => allowed.has(s));
    if (granted.length) grant.addResourceScope(uri, granted.join(' '));
  }
  return grant;
}

function json(ctx, status, body) {
  ctx.status = status;
  ctx.type = 'application/json';
  ctx.set('cache-control', 'no-store');
  ctx.body = body;
}

async function devRoutes(ctx, provider) {
  if (!ctx.path.startsWith('/dev/')) return false;
  const remote = ctx.req.socket.remoteAddress || '';
  if (!['127.0.0.1', '::1', '::ffff:127.0.0.1'].includes(remote)) {
    json(ctx, 403, { error: 'forbidden' });
    return true;
  }
  const path = ctx.path;
  const method = ctx.method;

  if (path === '/dev/health' && method === 'GET') {
    json(ctx, 200, { ok: true, issuer: provider.issuer, dev_only: true });
    return true;
  }
  if (path === '/dev/requests') {
    if (method === 'GET') { json(ctx, 200, requestLog); return true; }
    if (method === 'DELETE') { requestLog = []; ctx.status = 204; return true; }
  }
  if (path === '/dev/ciba' && method === 'GET') {
    json(ctx, 200, [...cibaPending.values()]);
    return true;
  }
  let match = /^\/dev\/ciba\/([^/]+)\/(approve|deny)$/u.exec(path);
  if (match && method === 'POST') {
    const [, id, verdict] = match;
    const pending = cibaPending.get(id);
    const request = await provider.BackchannelAuthenticationRequest.find(id, { ignoreExpiration: true });
    if (!pending || !request) { json(ctx, 404, { error: 'not_found' }); return true; }
    cibaPending.delete(id);
    let result;
    if (verdict === 'approve') {
      const grant = grantForRequest(provider, request.accountId, request.clientId, request.scope, request.resource);
      await grant.save();
      result = grant;
    } else {
      result = new errors.AccessDenied('end-user denied the request');
    }
    try {
      // The user approved exactly the details shown to them (RFC 9396 §3 with CIBA).
      const rar = verdict === 'approve' ? parseDetails(request.params?.authorization_details) : undefined;
      await provider.backchannelResult(request, result, { authTime: Math.floor(Date.now() / 1000), rar });
    } catch (err) {
      json(ctx, 502, { error: 'delivery_failed', error_description: String(err.message) });
      return true;
    }
    json(ctx, 200, { auth_req_id: id, result: verdict === 'approve' ? 'approved' : 'denied' });
    return true;
  }
  if (path === '/dev/dpop' && (method === 'GET' || method === 'POST')) {
    if (method === 'POST') {
      const form = await readForm(ctx);
      config.dpop.require_nonce = ['1', 'true', 'on', 'yes'].includes(String(form.require_nonce ?? 'true').toLowerCase());
    }
    json(ctx, 200, { require_nonce: !!config.dpop.require_nonce, bound: !!config.dpop.bound });
    return true;
  }
  if (path === '/dev/quirks' && (method === 'GET' || method === 'POST')) {
    if (method === 'POST') {
      const form = await readForm(ctx);
      const name = String(form.name || '');
      if (!Object.hasOwn(quirks, name)) { json(ctx, 400, { error: 'unknown_quirk' }); return true; }
      quirks[name] = ['1', 'true', 'on', 'yes'].includes(String(form.on ?? 'true').toLowerCase());
    }
    json(ctx, 200, quirks);
    return true;
  }
  match = /^\/dev\/accounts\/([^/]+)\/revoke-grants$/u.exec(path);
  if (match && method === 'POST') {
    // What revoking the client's access in an account page does: every grant of the account
    // is destroyed with its access and refresh tokens.
    const grantIds = [...(grantsByAccount.get(decodeURIComponent(match[1])) || [])];
    await Promise.all(grantIds.flatMap((id) => [
      provider.AccessToken.revokeByGrantId(id),
      provider.RefreshToken.revokeByGrantId(id),
      provider.Grant.adapter.destroy(id),
    ]));
    grantsByAccount.delete(decodeURIComponent(match[1]));
    json(ctx, 200, { grants: grantIds.length });
    return true;
  }
  match = /^\/dev\/device\/([^/]+)\/(approve|deny)$/u.exec(path);
  if (match && method === 'POST') {
    const [, rawCode, verdict] = match;
    const form = await readForm(ctx);
    const userCode = decodeURIComponent(rawCode).toUpperCase().replace(/\W/gu, '');
    const code = await provider.DeviceCode.findByUserCode(userCode);
    if (!code || code.accountId || code.error || code.consumed) {
      json(ctx, 404, { error: 'not_found' });
      return true;
    }
    if (verdict === 'deny') {
      Object.assign(code, { error: 'access_denied', errorDescription: 'End-User denied the request' });
    } else {
      const login = String(form.login || 'alice');
      if (!Object.hasOwn(accounts, login)) { json(ctx, 400, { error: 'unknown_login' }); return true; }
      // A fresh device code only holds the raw request params (scope, resource).
      const requested = [].concat(code.params?.resource || []).filter((r) => resources.has(r));
      const grant = grantForRequest(provider, login, code.clientId, code.params?.scope, requested);
      Object.assign(code, {
        accountId: login,
        grantId: await grant.save(),
        authTime: Math.floor(Date.now() / 1000),
        scope: code.params?.scope,
      });
      if (requested.length) code.resource = requested.length === 1 ? requested[0] : requested;
      // the user approves exactly the details the device asked for (RFC 9396)
      const rar = parseDetails(code.params?.authorization_details);
      if (rar) code.rar = rar;
    }
    await code.save();
    json(ctx, 200, { user_code: userCode, result: verdict === 'approve' ? 'approved' : 'denied' });
    return true;
  }
  json(ctx, 404, { error: 'not_found' });
  return true;
}

// ------------------------------------------------------------------ quirks & request log

function describeRequest(ctx) {
  const form = ctx.oidc.body || {};
  const auth = String(ctx.headers.authorization || '');
  let clientAuth = null;
  let assertionAudience = null;
  if (/^basic /iu.test(auth)) clientAuth = 'client_secret_basic';
  else if (form.client_assertion) {
    clientAuth = 'private_key_jwt';
    try {
      assertionAudience = b64urlJson(String(form.client_assertion).split('.')[1]).aud ?? null;
    } catch { /* not a JWT: leave it null */ }
  } else if (form.client_secret) clientAuth = 'client_secret_post';
  else if (form.client_id) clientAuth = 'none';
  const secretFields = SECRET_FIELDS.filter((name) => form[name] !== undefined);
  if (auth) secretFields.push('authorization_header');
  return {
    scope: form.scope ?? null,
    resource: [].concat(form.resource ?? []),
    client_auth: clientAuth,
    assertion_audience: assertionAudience,
    secret_fields: secretFields.sort(),
    dpop: describeProof(ctx.headers.dpop),
    dpop_jkt: form.dpop_jkt ?? null,
    authorization_details: parseDetails(form.authorization_details) ?? null,
  };
}

// The decoded header and claims of a request's DPoP proof (not verified here: oidc-provider
// verified it; tests check what the client put in it). `jwk_private` flags private members.
function describeProof(proof) {
  if (typeof proof !== 'string' || !proof) return null;
  try {
    const [h, p] = proof.split('.');
    const header = b64urlJson(h);
    const claims = b64urlJson(p);
    const jwk = header.jwk || {};
    return {
      typ: header.typ ?? null,
      alg: header.alg ?? null,
      jwk_kty: jwk.kty ?? null,
      jwk_private: ['d', 'p', 'q', 'dp', 'dq', 'qi', 'k'].some((m) => m in jwk),
      header_members: Object.keys(header).sort(),
      claims,
    };
  } catch {
    return { malformed: true };
  }
}

function applyQuirks(ctx, route) {
  const body = ctx.body && typeof ctx.body === 'object' && !Buffer.isBuffer(ctx.body)
    ? ctx.body : undefined;
  const grantType = ctx.oidc.params?.grant_type ?? ctx.oidc.body?.grant_type;
  if (quirks.refresh_invalid_grant_empty_body && route === 'token'
    && grantType === 'refresh_token' && ctx.status === 400 && body?.error === 'invalid_grant') {
    ctx.body = '';
    ctx.status = 400;
    ctx.type = 'text/plain';
  } else if (quirks.client_auth_403 && ctx.status === 401 && body?.error === 'invalid_client') {
    ctx.body = { detail: 'Invalid client credentials.' };
    ctx.status = 403;
    ctx.remove('WWW-Authenticate');
  } else if (quirks.omit_scope && route === 'token' && ctx.status === 200 && body) {
    delete body.scope;
  }
  if (quirks.dpop_token_type_bearer && route === 'token' && ctx.status === 200 && body
    && body.token_type === 'DPoP') {
    body.token_type = 'Bearer';
  }
}

// ------------------------------------------------------------------ wiring

function install(provider) {
  // RFC 8693 token exchange.
  provider.registerGrantType(
    GT_TOKEN_EXCHANGE,
    tokenExchangeHandler,
    ['subject_token', 'subject_token_type', 'actor_token', 'actor_token_type',
      'requested_token_type', 'resource', 'audience', 'scope', 'authorization_details'],
    ['resource', 'audience'],
  );

  // `slow_down` once per poll sequence (oidc-provider never sends it).
  const handlers = internals(provider)?.grantTypeHandlers;
  if (!(handlers instanceof Map) || !handlers.has(GT_CIBA) || !handlers.has(GT_DEVICE)) {
    throw new Error('oidc-provider internals changed: grantTypeHandlers');
  }
  for (const [grantType, knob, param] of [
    [GT_CIBA, config.ciba, 'auth_req_id'],
    [GT_DEVICE, config.device, 'device_code'],
  ]) {
    const original = handlers.get(grantType);
    handlers.set(grantType, async (ctx) => {
      const id = ctx.oidc.params[param];
      if (knob.slow_down_once && id && !slowedDown.has(id)) {
        slowedDown.add(id);
        throw new errors.SlowDown();
      }
      return original(ctx);
    });
  }

  if (!handlers.has('refresh_token')) {
    throw new Error('oidc-provider internals changed: refresh_token handler');
  }
  const originalRefresh = handlers.get('refresh_token');
  handlers.set('refresh_token', async (ctx) => {
    if (quirks.refresh_ignores_scope) ctx.oidc.params.scope = undefined;
    const delay = Number(config.refresh_delay_ms || 0);
    if (delay > 0) {
      let gone = false;
      ctx.res.once('close', () => { if (!ctx.res.writableFinished) gone = true; });
      await new Promise((resolve) => { setTimeout(resolve, delay); });
      if (gone || ctx.req.socket?.destroyed) {
        throw new errors.InvalidRequest('client went away before the refresh was processed');
      }
    }
    return originalRefresh(ctx);
  });

  provider.use(async (ctx, next) => {
    if (await devRoutes(ctx, provider)) return;
    if (await interactionRoutes(ctx, provider)) return;

    await next();

    const route = Object.getOwnPropertyDescriptor(ctx, 'oidc') ? ctx.oidc.route : undefined;
    if (route && LOGGED_ROUTES.has(route) && ctx.method === 'POST') {
      applyQuirks(ctx, route);
      requestLog.push({
        method: ctx.method,
        path: ctx.path,
        route,
        grant_type: route === 'token' ? (ctx.oidc.params?.grant_type ?? null) : null,
        client_id: ctx.oidc.client?.clientId ?? null,
        status: ctx.status,
        at: Date.now() / 1000,
        ...describeRequest(ctx),
      });
    }
    if (route === 'discovery' && ctx.status === 200 && ctx.body && typeof ctx.body === 'object') {
      const supported = new Set(ctx.body.scopes_supported || []);
      for (const s of resourceScopes) supported.add(s);
      ctx.body.scopes_supported = [...supported];
      if (config.dpop.bound) ctx.body.dpop_bound_access_tokens = true;
    }
    if (route === 'device_authorization' && ctx.status === 200 && config.device.interval
      && ctx.body && typeof ctx.body === 'object') {
      ctx.body.interval = Number(config.device.interval);
    }
  });
}

const server = http.createServer();
server.listen(listenPort, '127.0.0.1', () => {
  const { port } = server.address();
  const issuer = `http://127.0.0.1:${port}`;
  let provider;
  try {
    provider = new Provider(issuer, providerConfig);
    install(provider);
  } catch (err) {
    process.stderr.write(`devidp: failed to start: ${err.stack || err}\n`);
    process.exit(1);
  }
  provider.on('grant.saved', (grant) => {
    if (!grantsByAccount.has(grant.accountId)) grantsByAccount.set(grant.accountId, new Set());
    grantsByAccount.get(grant.accountId).add(grant.jti);
  });
  provider.on('server_error', (_ctx, err) => {
    process.stderr.write(`devidp: server_error: ${err.stack || err}\n`);
  });
  provider.on('backchannel.error', (...eventArgs) => {
    process.stderr.write(`devidp: backchannel.error: ${eventArgs.at(-1)?.message}\n`);
  });
  server.on('request', provider.callback());
  process.stdout.write(`${JSON.stringify({ ready: true, issuer, port })}\n`);
});

for (const signal of ['SIGINT', 'SIGTERM']) {
  process.on(signal, () => {
    server.close();
    process.exit(0);
  });
}
