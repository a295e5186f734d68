package dev.runtrack.client

import net.sf.geographiclib.Geodesic
import net.sf.geographiclib.GeodesicMask
import kotlin.math.abs
import kotlin.math.floor

/**
 * One fix as the overview needs it: microseconds since the epoch, WGS84 degrees.
 * [afterPause] marks the first fix after the recorder was paused: nothing between the fix before and
 * this one counts, neither distance nor time nor climb.
 */
data class Sample(
    val seq: Int,
    val timeUs: Long,
    val latitude: Double,
    val longitude: Double,
    val altitudeM: Double? = null,
    val heartRateBpm: Int? = null,
    val afterPause: Boolean = false,
)

/**
 * The overview the phone sends at STOP RUN, computed as the server computes it from the same trail
 * (summary_service/analysis.py and overview.py): geodesics on the WGS84 ellipsoid, moving time from
 * fix-to-fix speed, climb from smoothed altitudes with hysteresis, the mean heart rate, and an
 * encoded polyline of at most [POLYLINE_POINTS] evenly spaced fixes.
 */
data class Overview(
    val startUs: Long,
    val endUs: Long,
    val distanceM: Double,
    val movingTimeUs: Long,
    val elevationGainM: Double,
    val pointCount: Int,
    val avgHeartRateBpm: Double?,
    val polyline: String,
) {
    companion object {
        /** A fix-to-fix stretch counts as moving at this speed or more (a walk is about 1.4 m/s). */
        const val MOVING_MPS = 0.5

        /** The polyline keeps at most this many of the trail's fixes. */
        const val POLYLINE_POINTS = 10_000

        /** Altitudes are averaged over this many fixes either side of each... */
        const val SMOOTH_HALF_WINDOW = 5

        /** ...then a climb or descent counts once it passes this many metres from the last turn. */
        const val HYSTERESIS_M = 2.0

        /** The overview of a trail in seq order; [pointCount] is the phone's last seq. */
        fun of(samples: List<Sample>, pointCount: Int = samples.size): Overview {
            require(samples.isNotEmpty()) { "an overview needs at least one fix" }
            val cumulative = cumulativeDistances(samples)
            var movingUs = 0L
            for (i in 1 until samples.size) {
                if (samples[i].afterPause) continue
                val dtUs = samples[i].timeUs - samples[i - 1].timeUs
                if (dtUs > 0 && (cumulative[i] - cumulative[i - 1]) / (dtUs / 1e6) >= MOVING_MPS) movingUs += dtUs
            }
            val climbs = climbs(smoothedAltitudes(samples), pauses = samples.map { it.afterPause })
            val heartRates = samples.mapNotNull { it.heartRateBpm }
            val step = maxOf(1, (samples.size + POLYLINE_POINTS - 1) / POLYLINE_POINTS)
            val kept = (samples.indices step step).toMutableList()
            if (kept.last() != samples.lastIndex) kept += samples.lastIndex
            return Overview(
                startUs = samples.first().timeUs,
                endUs = samples.last().timeUs,
                distanceM = cumulative.last(),
                movingTimeUs = movingUs,
                elevationGainM = climbs.filter { it > 0 }.fold(0.0, Double::plus),
                pointCount = pointCount,
                avgHeartRateBpm = if (heartRates.isEmpty()) null else heartRates.sum().toDouble() / heartRates.size,
                polyline = encodePolyline(kept.map { samples[it].latitude to samples[it].longitude }),
            )
        }
    }
}

/** Metres from the first fix to each fix along the geodesics between them (none across a pause). */
internal fun cumulativeDistances(samples: List<Sample>): DoubleArray {
    val out = DoubleArray(samples.size)
    var total = 0.0
    for (i in 1 until samples.size) {
        val (a, b) = samples[i - 1] to samples[i]
        if (!b.afterPause) {
            total += Geodesic.WGS84.Inverse(a.latitude, a.longitude, b.latitude, b.longitude, GeodesicMask.DISTANCE).s12
        }
        out[i] = total
    }
    return out
}

/** The index ranges of the fixes between pauses. */
internal fun stretches(samples: List<Sample>): List<IntRange> {
    val starts = listOf(0) + (1 until samples.size).filter { samples[it].afterPause }
    return starts.mapIndexed { k, start -> start until (starts.getOrNull(k + 1) ?: samples.size) }
}

/**
 * Each altitude averaged with those of the [half] fixes either side that have one, within its stretch
 * between pauses; null where no fix in the window has an altitude.
 */
internal fun smoothedAltitudes(samples: List<Sample>, half: Int = Overview.SMOOTH_HALF_WINDOW): List<Double?> {
    val parts = stretches(samples)
    if (parts.size > 1) return parts.flatMap { smoothedAltitudes(samples.slice(it), half) }
    val known = samples.withIndex().filter { (_, s) -> s.altitudeM?.isFinite() == true }
    if (known.isEmpty()) return List(samples.size) { null }
    // A running sum, differenced: the same floating-point steps as the server's prefix sums.
    val prefix = DoubleArray(known.size + 1)
    known.forEachIndexed { k, (_, s) -> prefix[k + 1] = prefix[k] + s.altitudeM!! }
    val positions = known.map { it.index }
    var lo = 0
    var hi = 0
    return samples.indices.map { i ->
        while (lo < positions.size && positions[lo] < i - half) lo++
        while (hi < positions.size && positions[hi] <= i + half) hi++
        if (hi > lo) (prefix[hi] - prefix[lo]) / (hi - lo) else null
    }
}

/**
 * The climb (+) or descent (-) credited at each fix: a change counts once it passes [hysteresis] from
 * the last turning point, credited where it does; after a pause the climb starts again from there.
 */
internal fun climbs(altitudes: List<Double?>, hysteresis: Double = Overview.HYSTERESIS_M, pauses: List<Boolean> = emptyList()): DoubleArray {
    val out = DoubleArray(altitudes.size)
    var anchor: Double? = null
    altitudes.forEachIndexed { i, altitude ->
        if (altitude == null) return@forEachIndexed
        val from = anchor
        if (from == null || pauses.getOrElse(i) { false }) {
            anchor = altitude
        } else if (abs(altitude - from) >= hysteresis) {
            out[i] = altitude - from
            anchor = altitude
        }
    }
    return out
}

/**
 * Google's encoded polyline of (latitude, longitude) pairs, rounding halves away from zero as the
 * server's encoder does.
 */
fun encodePolyline(points: List<Pair<Double, Double>>, precision: Int = 5): String {
    val factor = Math.pow(10.0, precision.toDouble())
    fun rounded(value: Double): Long = floor(abs(value * factor) + 0.5).let { if (value < 0) -it else it }.toLong()
    val out = StringBuilder()
    fun write(delta: Long) {
        var coord = delta shl 1
        if (coord < 0) coord = coord.inv()
        while (coord >= 0x20) {
            out.append(((0x20 or (coord and 0x1f).toInt()) + 63).toChar())
            coord = coord shr 5
        }
        out.append((coord + 63).toInt().toChar())
    }
    var previous = 0L to 0L
    for ((latitude, longitude) in points) {
        val current = rounded(latitude) to rounded(longitude)
        write(current.first - previous.first)
        write(current.second - previous.second)
        previous = current
    }
    return out.toString()
}
