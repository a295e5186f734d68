package dev.runtrack.client

import io.grpc.Channel
import io.grpc.Status
import runtrack.v1.Tracking.LiveLink
import runtrack.v1.TrackingServiceGrpcKt.TrackingServiceCoroutineStub
import runtrack.v1.createLiveLinkRequest
import runtrack.v1.deleteLiveLinkRequest
import runtrack.v1.listLiveLinksRequest
import java.time.Instant
import kotlin.time.Duration
import kotlin.time.Duration.Companion.seconds

/**
 * Live links of the runner's runs (CONTRACT §13): a link anyone holding it can follow the run with.
 * Its `url` is what the runner shares; revoking it cuts off its watchers within seconds.
 */
class LiveLinks(
    channel: Channel,
    private val tokens: Tokens = Tokens { null },
    private val backoff: Backoff = Backoff(),
    private val callTimeout: Duration = 30.seconds,
) {
    private val tracking = TrackingServiceCoroutineStub(channel)

    /**
     * A new link to follow [runId] until [expireTime] (default: an hour after the run stops), posting
     * its state changes to [webhookUrl] if given. Sent once (again only after UNAUTHENTICATED, which made
     * nothing, with a refreshed token): a retry could make a second link.
     */
    suspend fun create(runId: String, expireTime: Instant? = null, webhookUrl: String = ""): LiveLink {
        val request = createLiveLinkRequest {
            this.runId = runId
            expireTime?.let { this.expireTime = it.toTimestamp() }
            this.webhookUrl = webhookUrl
        }
        return tokens.authorized { tracking.within(callTimeout).createLiveLink(request, it) }
    }

    /** The run's links, oldest first, without their tokens. */
    suspend fun list(runId: String): List<LiveLink> =
        retrying(backoff) {
            tokens.authorized { tracking.within(callTimeout).listLiveLinks(listLiveLinksRequest { this.runId = runId }, it).linksList }
        }

    /** Revokes a link, retried until the server answers; a link found gone on a retry was revoked by an earlier try. */
    suspend fun revoke(runId: String, linkId: String) {
        var tried = false
        retrying(backoff) {
            try {
                tokens.authorized { tracking.within(callTimeout).deleteLiveLink(deleteLiveLinkRequest { this.runId = runId; this.linkId = linkId }, it) }
            } catch (error: Exception) {
                if (!(tried && errorDetails(error)?.code == Status.Code.NOT_FOUND)) throw error
            } finally {
                tried = true
            }
        }
    }
}
