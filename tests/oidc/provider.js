// A real OpenID Connect provider for tl-gateway's sign-in tests: the certified `oidc-provider`
// (pinned in package.json), on loopback, on a free port. It prints one line `issuer <URL>` when it
// listens, then serves until stdin closes or it is killed.
//
// Environment: OIDC_CLIENT_ID, OIDC_CLIENT_SECRET, OIDC_REDIRECT_URIS (comma-separated).
//
// Accounts (the development login form accepts any login name and password):
//   alice -> alice@example.com, groups [tl-admins]
//   bob   -> bob+tl@example.com, groups [tl-members]
//   any other name N -> N@example.com, no groups
//
// A test hook, so refusal tests can hand the gateway a token the provider itself would never
// issue: `POST /__test/tamper` with body `audience` (the next ID token says another audience,
// signed with the provider's real key), `unknown-key` (the next ID token is signed with a key the
// provider never published) or `rotated-key` (the provider rotates to a new key: the next ID token
// is signed with it, and from then on /jwks publishes it too, as a real rotation does). The token
// endpoint's next answer carries it; then the mode is reset.
import http from 'node:http';
import { randomUUID } from 'node:crypto';
import Provider from 'oidc-provider';
import * as jose from 'jose';

const clientId = process.env.OIDC_CLIENT_ID || 'tl-gateway';
const clientSecret = process.env.OIDC_CLIENT_SECRET || 'test-client-secret-0123456789';
const redirectUris = (process.env.OIDC_REDIRECT_URIS || '').split(',').filter(Boolean);

const accounts = {
  alice: { email: 'alice@example.com', groups: ['tl-admins'], name: 'Alice Admin' },
  bob: { email: 'bob+tl@example.com', groups: ['tl-members'], name: 'Bob Member' },
};

const signing = await jose.generateKeyPair('RS256', { extractable: true });
const signingJwk = { ...(await jose.exportJWK(signing.privateKey)), kid: 'test-signing-key', alg: 'RS256', use: 'sig' };
const rogue = await jose.generateKeyPair('RS256');
const rotated = await jose.generateKeyPair('RS256', { extractable: true });
const rotatedJwk = { ...(await jose.exportJWK(rotated.publicKey)), kid: 'rotated-signing-key', alg: 'RS256', use: 'sig' };
let rotatedPublished = false;
let tamper = null;

const server = http.createServer();
await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
const issuer = `http://127.0.0.1:${server.address().port}`;

const provider = new Provider(issuer, {
  clients: [{
    client_id: clientId,
    client_secret: clientSecret,
    redirect_uris: redirectUris,
    grant_types: ['authorization_code'],
    response_types: ['code'],
    token_endpoint_auth_method: 'client_secret_basic',
  }],
  jwks: { keys: [signingJwk] },
  pkce: { required: () => true, methods: ['S256'] },
  scopes: ['openid', 'email', 'profile', 'groups'],
  claims: { openid: ['sub'], email: ['email', 'email_verified'], profile: ['name'], groups: ['groups'] },
  // Claims in the ID token itself (not only at userinfo): the gateway reads them from there.
  conformIdTokenClaims: false,
  cookies: { keys: [randomUUID()] },
  features: { devInteractions: { enabled: true } },
  async findAccount(ctx, id) {
    const known = accounts[id] || { email: `${id}@example.com`, groups: [], name: id };
    return {
      accountId: id,
      async claims() {
        return { sub: id, email: known.email, email_verified: true, name: known.name, groups: known.groups };
      },
    };
  },
  // No consent screen: every requested scope is granted (a test provider; a real one asks).
  async loadExistingGrant(ctx) {
    const grant = new ctx.oidc.provider.Grant({
      clientId: ctx.oidc.client.clientId,
      accountId: ctx.oidc.session.accountId,
    });
    grant.addOIDCScope('openid email profile groups');
    await grant.save();
    return grant;
  },
});

provider.use(async (ctx, next) => {
  if (ctx.path === '/__test/tamper' && ctx.method === 'POST') {
    let body = '';
    for await (const chunk of ctx.req) body += chunk;
    tamper = body.trim() || null;
    ctx.status = 204;
    return;
  }
  await next();
  if (ctx.path === '/jwks' && rotatedPublished && ctx.body && Array.isArray(ctx.body.keys)) {
    ctx.body = { keys: [...ctx.body.keys, rotatedJwk] };
  }
  if (ctx.path === '/token' && tamper && ctx.body && ctx.body.id_token) {
    const mode = tamper;
    tamper = null;
    const claims = jose.decodeJwt(ctx.body.id_token);
    if (mode === 'audience') {
      claims.aud = 'another-application';
      ctx.body.id_token = await new jose.SignJWT(claims)
        .setProtectedHeader({ alg: 'RS256', kid: signingJwk.kid })
        .sign(signing.privateKey);
    } else if (mode === 'rotated-key') {
      rotatedPublished = true;
      ctx.body.id_token = await new jose.SignJWT(claims)
        .setProtectedHeader({ alg: 'RS256', kid: rotatedJwk.kid })
        .sign(rotated.privateKey);
    } else if (mode === 'unknown-key') {
      ctx.body.id_token = await new jose.SignJWT(claims)
        .setProtectedHeader({ alg: 'RS256', kid: 'a-key-nobody-published' })
        .sign(rogue.privateKey);
    }
  }
});

server.on('request', provider.callback());
process.stdout.write(`issuer ${issuer}\n`);
process.stdin.on('end', () => process.exit(0));
process.stdin.resume();
