package dev.runtrack.client

import com.google.protobuf.Duration
import com.google.protobuf.Timestamp
import runtrack.v1.Summary.RunOverview
import runtrack.v1.Tracking.TrackPoint
import runtrack.v1.runOverview
import runtrack.v1.trackPoint
import java.time.Instant

/** One fix as the phone's location and sensor APIs give it. */
data class Fix(
    val time: Instant,
    val latitude: Double,
    val longitude: Double,
    val altitudeM: Double? = null,
    val horizontalAccuracyM: Float? = null,
    val speedMps: Float? = null,
    val heartRateBpm: Int? = null,
    val cadenceSpm: Int? = null,
)

internal fun Fix.toTrackPoint(seq: Int, afterPause: Boolean): TrackPoint {
    val fix = this
    return trackPoint {
        this.seq = seq
        time = fix.time.toTimestamp()
        latitude = fix.latitude
        longitude = fix.longitude
        fix.altitudeM?.let { altitudeM = it }
        fix.horizontalAccuracyM?.let { horizontalAccuracyM = it }
        fix.speedMps?.let { speedMps = it }
        fix.heartRateBpm?.let { heartRateBpm = it }
        fix.cadenceSpm?.let { cadenceSpm = it }
        if (afterPause) this.afterPause = true
    }
}

/** The point as the overview reads it, times in microseconds (the trail the server stores keeps milliseconds: CQL `timestamp`). */
fun TrackPoint.toSample(): Sample = Sample(
    seq = seq,
    timeUs = time.seconds * 1_000_000 + time.nanos / 1_000,
    latitude = latitude,
    longitude = longitude,
    altitudeM = if (hasAltitudeM()) altitudeM else null,
    heartRateBpm = if (hasHeartRateBpm()) heartRateBpm else null,
    afterPause = afterPause,
)

fun Overview.toProto(): RunOverview {
    val overview = this
    return runOverview {
        startTime = timestampOfMicros(overview.startUs)
        endTime = timestampOfMicros(overview.endUs)
        distanceM = overview.distanceM
        movingTime = Duration.newBuilder().setSeconds(overview.movingTimeUs / 1_000_000)
            .setNanos((overview.movingTimeUs % 1_000_000).toInt() * 1_000).build()
        elevationGainM = overview.elevationGainM
        pointCount = overview.pointCount
        overview.avgHeartRateBpm?.let { avgHeartRateBpm = it }
        polyline = overview.polyline
    }
}

internal fun Instant.toTimestamp(): Timestamp = Timestamp.newBuilder().setSeconds(epochSecond).setNanos(nano).build()

internal fun timestampOfMicros(us: Long): Timestamp = Timestamp.newBuilder()
    .setSeconds(Math.floorDiv(us, 1_000_000L)).setNanos(Math.floorMod(us, 1_000_000L).toInt() * 1_000).build()
