// A real OpenID Connect provider for WindFlow's SSO tests: panva/oidc-provider (OpenID
// Certified), with one confidential client, PKCE required, and a few accounts with groups.
// Only the login screen is ours: a form that names the account (no password), so that a test
// can sign in by posting it. Everything else (discovery, JWKS, authorization, tokens, ID token
// signing, nonce, state) is the provider's own.
//
// Environment: PORT, CLIENT_ID, CLIENT_SECRET, REDIRECT_URI. Prints "ready <issuer>" when
// listening on 127.0.0.1.

import http from 'node:http';
import Provider from 'oidc-provider';

const port = Number(process.env.PORT);
const issuer = `http://127.0.0.1:${port}`;

// Accounts: groups decide the WindFlow role; `amr` says how the account "signed in".
const accounts = {
  alice: { email: 'alice@example.test', groups: ['windflow-admins', 'staff'] },
  bob: { email: 'bob@example.test', groups: ['windflow-operators'] },
  mallory: { email: 'mallory@example.test', groups: ['contractors'] },
  'alice-mfa': { email: 'alice-mfa@example.test', groups: ['windflow-operators'], amr: ['pwd', 'otp'] },
};

// Tests may change an account's groups while the provider runs.
const groupsOverride = {};

const provider = new Provider(issuer, {
  clients: [
    {
      client_id: process.env.CLIENT_ID,
      client_secret: process.env.CLIENT_SECRET,
      redirect_uris: [process.env.REDIRECT_URI],
      grant_types: ['authorization_code'],
      response_types: ['code'],
      token_endpoint_auth_method: 'client_secret_basic',
    },
  ],
  pkce: { required: () => true },
  scopes: ['openid', 'profile', 'email', 'groups'],
  claims: {
    // `amr` says how the account signed in (its second factor, for WindFlow).
    openid: ['sub', 'amr'],
    profile: ['preferred_username', 'name'],
    email: ['email', 'email_verified'],
    groups: ['groups'],
  },
  // Scope-requested claims go into the ID token too (as Keycloak's mappers do).
  conformIdTokenClaims: false,
  features: { devInteractions: { enabled: false } },
  interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
  cookies: { keys: ['windflow-test-only'] },
  async findAccount(ctx, id) {
    const account = accounts[id];
    if (!account) return undefined;
    return {
      accountId: id,
      async claims() {
        return {
          sub: id,
          preferred_username: id,
          name: id,
          email: account.email,
          email_verified: true,
          groups: groupsOverride[id] ?? account.groups,
        };
      },
    };
  },
});

async function readForm(req) {
  let body = '';
  for await (const chunk of req) body += chunk;
  return new URLSearchParams(body);
}

const server = http.createServer(async (req, res) => {
  try {
    const url = new URL(req.url, issuer);
    const login = url.pathname.match(/^\/interaction\/([^/]+)\/login$/);
    if (req.method === 'GET' && url.pathname.startsWith('/interaction/')) {
      const details = await provider.interactionDetails(req, res);
      res.setHeader('content-type', 'text/html');
      res.end(`<form method="post" action="/interaction/${details.uid}/login"><input name="login"><button>Sign in</button></form>`);
      return;
    }
    if (req.method === 'POST' && login) {
      const form = await readForm(req);
      const accountId = form.get('login');
      const details = await provider.interactionDetails(req, res);
      if (!accounts[accountId]) {
        await provider.interactionFinished(req, res, { error: 'access_denied', error_description: 'no such account' });
        return;
      }
      const grant = new provider.Grant({ accountId, clientId: details.params.client_id });
      grant.addOIDCScope(details.params.scope);
      const grantId = await grant.save();
      const amr = accounts[accountId].amr ?? ['pwd'];
      await provider.interactionFinished(req, res, { login: { accountId, amr }, consent: { grantId } });
      return;
    }
    // A test hook: PUT /test/groups/<account> with a JSON array changes that account's groups.
    const groups = url.pathname.match(/^\/test\/groups\/([^/]+)$/);
    if (req.method === 'PUT' && groups) {
      let body = '';
      for await (const chunk of req) body += chunk;
      groupsOverride[groups[1]] = JSON.parse(body);
      res.end('ok');
      return;
    }
    provider.callback()(req, res);
  } catch (error) {
    res.statusCode = 500;
    res.end(String(error));
  }
});

server.listen(port, '127.0.0.1', () => console.log(`ready ${issuer}`));
process.on('SIGTERM', () => server.close(() => process.exit(0)));
