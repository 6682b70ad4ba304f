// The gRPC-web clients, through Envoy on the page's own origin. The token (if signed in) goes in
// the Authorization header; Envoy checks it and tells the services who is calling.
import { createClient, type Interceptor } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import { BettingService } from "./gen/livebet/betting/v1/betting_service_pb";
import { WalletService } from "./gen/livebet/betting/v1/wallet_service_pb";
import { FeedService } from "./gen/livebet/feed/v1/feed_service_pb";
import { OddsService } from "./gen/livebet/odds/v1/odds_service_pb";

const TOKEN_KEY = "livebet.token";

export const session = {
  get token(): string {
    return localStorage.getItem(TOKEN_KEY) ?? "";
  },
  set token(value: string) {
    if (value) localStorage.setItem(TOKEN_KEY, value);
    else localStorage.removeItem(TOKEN_KEY);
  },
  /** The account in the token (its `sub`), read without verifying: Envoy verifies it. */
  get account(): string {
    try {
      const body = this.token.split(".")[1] ?? "";
      const claims = JSON.parse(atob(body.replace(/-/g, "+").replace(/_/g, "/")));
      return typeof claims.sub === "string" ? claims.sub : "";
    } catch {
      return "";
    }
  },
};

const auth: Interceptor = (next) => async (req) => {
  if (session.token) req.header.set("authorization", `Bearer ${session.token}`);
  return next(req);
};

const transport = createGrpcWebTransport({ baseUrl: location.origin, useBinaryFormat: true, interceptors: [auth] });

export const odds = createClient(OddsService, transport);
export const feed = createClient(FeedService, transport);
export const betting = createClient(BettingService, transport);
export const wallet = createClient(WalletService, transport);
